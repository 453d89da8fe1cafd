"""A real S3-compatible server for tests: moto's standalone server on a free loopback port.

It checks signatures: the server starts with ``INITIAL_NO_AUTH_ACTION_COUNT``, so
the first few calls (making an IAM user, its policy and its access key) go
unsigned and every later request must be signed with a key the server issued.
Wrong credentials are therefore refused as a real store refuses them. The CLI
finds the endpoint and the keys as botocore does, in the environment
(``env()``): nothing S3-specific is passed on its command line.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["S3Server", "serve", "start"]

# make_user's three IAM calls, then the server wants signatures
_UNSIGNED_CALLS = 3


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    _proc: subprocess.Popen[bytes] = field(repr=False)

    def env(self, **overrides: str) -> dict[str, str]:
        """What a process needs to reach this server the SDK's way."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", **overrides}  # fmt: skip

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")  # fmt: skip

    def bucket(self, prefix: str = "t", *, versioned: bool = False) -> str:
        name = f"{prefix}-{secrets.token_hex(4)}".lower()
        s3 = self.client()
        s3.create_bucket(Bucket=name)
        if versioned:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_user(endpoint: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                       aws_secret_access_key="bootstrap", region_name="us-east-1")  # fmt: skip
    iam.create_user(UserName="batch")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="batch", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="batch")["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


def start(timeout: float = 30.0) -> S3Server | str:
    """A running server, or the reason none could be started here."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        return f"moto[server] is not installed ({exc})"
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(_UNSIGNED_CALLS)}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            # moto's dashboard path: answers without counting as an AWS action
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                return f"moto's server did not start on {endpoint}"
            time.sleep(0.1)
    key_id, secret = _make_user(endpoint)
    return S3Server(endpoint, key_id, secret, proc)


def serve() -> Iterator[S3Server]:
    """A server for a test session (both suites' fixtures): yields it and stops it after;
    skips, loudly, only where this machine cannot start one."""
    import pytest

    server = start()
    if isinstance(server, str):
        pytest.skip(f"S3 TESTS SKIPPED: cannot start a server here: {server}")
    try:
        yield server
    finally:
        server.stop()
