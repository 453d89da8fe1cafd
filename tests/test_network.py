"""Enterprise networks: a private CA, mutual TLS and a real forward proxy (proxy.py).

The simulator serves TLS with a certificate from a CA made by trustme; a proxy.py
process started here is the corporate proxy (CONNECT, Basic proxy auth). What went
through the proxy is read from the proxy's own access log: one ``CONNECT host:port``
line per tunnel. REST goes to ``localhost`` and CometD to ``127.0.0.1`` (both names are
on the certificate), so the log tells the REST tunnels from the CometD ones.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from helpers import ENV, PASSWORD, USER, job_args, make_sim, numbers, read_report, run_cli, write_csv

from batch_cancel.gws.network import mask_proxy, proxy_for
from batch_cancel.simulator import ThreadedSimulator

PROXY_USER, PROXY_PASSWORD = "proxyuser", "Pr0xy-pa55!"


@dataclass
class Pki:
    ca: Path
    server_cert: Path  # chain and key in one PEM
    client_ca: Path
    client_cert: Path  # chain and key in one PEM


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, client_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(d / "server.pem")
    )
    client_ca.cert_pem.write_to_path(str(d / "client-ca.pem"))
    client_ca.issue_cert("batch-cancel@example.com").private_key_and_cert_chain_pem.write_to_path(
        str(d / "client.pem")
    )
    return Pki(d / "ca.pem", d / "server.pem", d / "client-ca.pem", d / "client.pem")


@dataclass
class Proxy:
    port: int
    log: Path

    def url(self, user: str = PROXY_USER, password: str = PROXY_PASSWORD) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self.port}"

    def tunnels(self) -> list[tuple[str, int]]:
        """(host:port, bytes) of every CONNECT tunnel the proxy served, from its access log."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return [(m[1], int(m[2])) for m in re.finditer(r"CONNECT (\S+) - (\d+) bytes", text)]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    d = tmp_path_factory.mktemp("proxy")
    port_file, log = d / "port", d / "access.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0",
         "--port-file", str(port_file), "--log-file", str(log), "--num-workers", "1",
         "--num-acceptors", "1", "--basic-auth", f"{PROXY_USER}:{PROXY_PASSWORD}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, "proxy.py did not start"
            assert time.monotonic() < deadline, "proxy.py did not write its port in 20 s"
            time.sleep(0.05)
        yield Proxy(int(port_file.read_text()), log)
    finally:
        proc.terminate()
        proc.wait(10)


def tls_sim(pki: Pki, *, client_ca: bool = False, cert: Path | None = None) -> ThreadedSimulator:
    return make_sim(tls_cert=str(cert or pki.server_cert),
                    tls_client_ca=str(pki.client_ca) if client_ca else None)  # fmt: skip


def https_args(sim: ThreadedSimulator, tmp: Path, n: int = 5, **opts: object) -> list[str]:
    port = sim.base_url.rsplit(":", 1)[1]
    src = write_csv(tmp / "in.csv", ["phone_number"], [[x] for x in numbers(n)])
    return job_args(f"https://localhost:{port}", tmp, src, rate=0, ack_timeout=5,
                    cometd_url=f"https://127.0.0.1:{port}/api/v2/notifications", **opts)  # fmt: skip


def no_proxy_env() -> dict[str, str]:
    return {**ENV, "HTTPS_PROXY": "", "https_proxy": "", "HTTP_PROXY": "", "http_proxy": "",
            "ALL_PROXY": "", "all_proxy": "", "NO_PROXY": "", "no_proxy": ""}  # fmt: skip


@pytest.mark.subprocess  # proxy.py runs as a process of its own
def test_whole_run_through_the_proxy_to_a_private_ca(pki: Pki, proxy: Proxy, tmp_path: Path) -> None:
    sim = tls_sim(pki)
    try:
        before = len(proxy.tunnels())
        env = {**no_proxy_env(), "HTTPS_PROXY": proxy.url()}
        result = run_cli([*https_args(sim, tmp_path), "--ca-bundle", str(pki.ca), "-v"], env)
        assert result.exit_code == 0, result.stderr
        assert result.summary["cancelled"] == 5
        port = sim.base_url.rsplit(":", 1)[1]
        tunnels = proxy.tunnels()[before:]
        hosts = {host for host, _ in tunnels}
        # the login, the device list and the POSTs (REST) and the long polls (CometD) each
        # went through a tunnel the proxy opened; the proxy's byte counts say they carried data
        assert f"localhost:{port}" in hosts and f"127.0.0.1:{port}" in hosts, tunnels
        assert all(n > 0 for _, n in tunnels)
        ledger = sim.ledger
        assert len(ledger.entries) == 5
        assert {r["status"] for r in read_report(tmp_path / "report.csv")} == {"cancelled"}
        # proxy credentials and the GWS password are never logged, even with -v
        assert PROXY_PASSWORD not in result.stderr + result.stdout
        assert PASSWORD not in result.stderr + result.stdout
        assert f"***@127.0.0.1:{proxy.port}" in result.stderr  # the proxy is named, masked
    finally:
        sim.stop()


@pytest.mark.subprocess  # proxy.py runs as a process of its own
def test_without_proxy_credentials_the_proxy_refuses_and_nothing_is_sent(
    pki: Pki, proxy: Proxy, tmp_path: Path
) -> None:
    """Proves the run has no way around the proxy: refused there, nothing reaches GWS."""
    sim = tls_sim(pki)
    try:
        env = {**no_proxy_env(), "HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}"}
        result = run_cli([*https_args(sim, tmp_path), "--ca-bundle", str(pki.ca), "--max-outage", "1"],
                         env)  # fmt: skip
        assert result.exit_code == 3, result.stderr
        assert "407" in result.stderr
        assert len(sim.ledger.entries) == 0
    finally:
        sim.stop()


@pytest.mark.subprocess  # proxy.py runs as a process of its own
def test_unknown_ca_exits_2_naming_the_host_and_nothing_is_sent(
    pki: Pki, proxy: Proxy, tmp_path: Path
) -> None:
    sim = tls_sim(pki)
    try:
        env = {**no_proxy_env(), "HTTPS_PROXY": proxy.url()}
        result = run_cli(https_args(sim, tmp_path), env)
        assert result.exit_code == 2, result.stderr
        port = sim.base_url.rsplit(":", 1)[1]
        errors = [line for line in result.stderr.splitlines() if "error" in line]
        assert len(errors) == 1, result.stderr
        assert f"TLS certificate of localhost:{port} refused: unknown CA" in errors[0]
        assert "--ca-bundle" in errors[0]
        assert "Traceback" not in result.stderr
        assert len(sim.ledger.entries) == 0
        assert result.summary["pending"] == 5 and result.summary["exit_code"] == 2
    finally:
        sim.stop()


@pytest.mark.parametrize("case", ["expired", "wrong name"])
def test_expired_or_wrong_name_exits_2(pki: Pki, tmp_path: Path, case: str) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    if case == "expired":
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        leaf = ca.issue_cert("localhost", "127.0.0.1", not_before=past - datetime.timedelta(days=30),
                             not_after=past)  # fmt: skip
    else:
        leaf = ca.issue_cert("gws.other.example")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    sim = tls_sim(pki, cert=tmp_path / "server.pem")
    try:
        result = run_cli([*https_args(sim, tmp_path), "--ca-bundle", str(tmp_path / "ca.pem")],
                         no_proxy_env())  # fmt: skip
        assert result.exit_code == 2, result.stderr
        assert f"refused: {case} (" in result.stderr
        assert len(sim.ledger.entries) == 0
    finally:
        sim.stop()


def test_ssl_cert_file_is_honoured_without_ca_bundle(pki: Pki, tmp_path: Path) -> None:
    sim = tls_sim(pki)
    try:
        env = {**no_proxy_env(), "SSL_CERT_FILE": str(pki.ca)}
        result = run_cli(https_args(sim, tmp_path, n=2), env)
        assert result.exit_code == 0, result.stderr
        assert f"trust store {pki.ca} (SSL_CERT_FILE)" in result.stderr
    finally:
        sim.stop()


@pytest.mark.parametrize("record_client", ["auto", "aiohttp"])
def test_records_over_mutual_tls_without_a_proxy_on_either_record_client(
    pki: Pki, tmp_path: Path, record_client: str
) -> None:
    # no proxy: "auto" sends the POSTs through batch-cancel's own client, with the run's one
    # TLS context (the CA bundle, the client certificate the server requires)
    sim = tls_sim(pki, client_ca=True)
    try:
        args = [*https_args(sim, tmp_path), "--ca-bundle", str(pki.ca), "--client-cert", str(pki.client_cert)]
        ok = run_cli([*args, "--record-client", record_client, "-v"], no_proxy_env())
        assert ok.exit_code == 0, ok.stderr
        used = "batch-cancel's own HTTP/1.1 client" if record_client == "auto" else "aiohttp"
        assert f"record POSTs on {used}" in ok.stderr
        assert ok.summary["cancelled"] == 5 and len(sim.ledger.entries) == 5
    finally:
        sim.stop()


@pytest.mark.subprocess  # proxy.py runs as a process of its own
def test_mutual_tls_accepted_with_a_client_certificate_refused_without(
    pki: Pki, proxy: Proxy, tmp_path: Path
) -> None:
    sim = tls_sim(pki, client_ca=True)
    try:
        env = {**no_proxy_env(), "HTTPS_PROXY": proxy.url()}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        ok = run_cli([*https_args(sim, tmp_path / "a"), "--ca-bundle", str(pki.ca),
                      "--client-cert", str(pki.client_cert)], env)  # fmt: skip
        assert ok.exit_code == 0, ok.stderr
        assert ok.summary["cancelled"] == 5 and len(sim.ledger.entries) == 5
        refused = run_cli([*https_args(sim, tmp_path / "b"), "--ca-bundle", str(pki.ca)], env)
        assert refused.exit_code == 2, refused.stderr
        assert "requires a client certificate" in refused.stderr
        assert len(sim.ledger.entries) == 5  # nothing more was sent
    finally:
        sim.stop()


@pytest.mark.subprocess  # proxy.py runs as a process of its own
def test_preflight_names_the_proxy_and_the_trust_store(pki: Pki, proxy: Proxy) -> None:
    sim = tls_sim(pki)
    try:
        port = sim.base_url.rsplit(":", 1)[1]
        env = {**no_proxy_env(), "HTTPS_PROXY": proxy.url(), "GWS_CA_BUNDLE": str(pki.ca)}
        result = run_cli(["preflight", "--base-url", f"https://localhost:{port}", "--username", USER], env)
        assert result.exit_code == 0, result.stderr
        line = next(x for x in result.stderr.splitlines() if "network" in x)
        assert f"proxy http://***@127.0.0.1:{proxy.port} (from HTTPS_PROXY)" in line
        assert f"trust store {pki.ca} (--ca-bundle)" in line
        assert PROXY_PASSWORD not in result.stderr + result.stdout
    finally:
        sim.stop()


def test_a_proxy_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[numbers(1)[0]]])
    args = job_args("https://gws.example.com", tmp_path, src, proxy="http://u:secret@proxy:3128")
    result = run_cli(args, no_proxy_env())
    assert result.exit_code == 2
    assert "--proxy carries credentials" in result.stderr and "secret" not in result.stderr


def test_proxy_choice_reads_the_environment_as_curl_does() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2", "HTTP_PROXY": "http://h:3",
           "NO_PROXY": "localhost,.corp.example"}  # fmt: skip
    assert proxy_for("https://gws.example.com/x", None, env) == ("http://lower:1", "https_proxy")
    assert proxy_for("https://gws.example.com/x", None, {"HTTPS_PROXY": "http://upper:2"}) == (
        "http://upper:2", "HTTPS_PROXY")  # fmt: skip
    # curl reads only the lower-case http_proxy (HTTP_PROXY can be set by a request header in CGI)
    assert proxy_for("http://gws.example.com/x", None, env) == (None, "")
    assert proxy_for("http://gws.example.com/x", None, {**env, "http_proxy": "http://l:6"}) == (
        "http://l:6", "http_proxy")  # fmt: skip
    assert proxy_for("https://gws.corp.example/x", None, env) == (None, "NO_PROXY")
    assert proxy_for("https://localhost:8443/x", None, env) == (None, "NO_PROXY")
    assert proxy_for("https://gws.example.com", None, {"ALL_PROXY": "http://a:4"}) == ("http://a:4",
                                                                                     "ALL_PROXY")  # fmt: skip
    # --proxy is used on purpose: NO_PROXY does not apply to it
    assert proxy_for("https://localhost/x", "http://explicit:5", env) == ("http://explicit:5", "--proxy")
    assert proxy_for("https://gws.example.com", None, {}) == (None, "")
    assert mask_proxy("http://u:p@proxy:3128") == "http://***@proxy:3128"


async def test_the_probe_reads_a_servers_certificate_required_alert(pki: Pki) -> None:
    """A server that sends its TLS alert (Jetty, nginx, OpenSSL do; asyncio servers like the
    simulator's drop it) is understood by name, through the same path a failed login takes."""
    import socket
    import ssl
    import threading

    from batch_cancel.gws.network import Route, tls_probe
    from batch_cancel.gws.responses import probe_verdict

    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(pki.server_cert))
    server.load_verify_locations(str(pki.client_ca))
    server.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            server.wrap_socket(conn, server_side=True).recv(1)  # blocking: the alert is sent

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(pki.ca))
    outcome = await tls_probe(f"https://localhost:{port}/api/v2/me", Route(ssl=client))
    thread.join(5)
    listener.close()
    error = probe_verdict(outcome, f"localhost:{port}", client_cert=False)
    assert error is not None, outcome
    expected = f"TLS with localhost:{port} refused: the server requires a client certificate"
    assert str(error).startswith(expected)


def test_a_certificate_problem_on_the_cometd_host_also_exits_2_before_sending(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    sim = make_sim(tls_cert=str(tmp_path / "server.pem"))
    try:
        # REST at localhost is fine; CometD at 127.0.0.1 is not a name on the certificate
        result = run_cli([*https_args(sim, tmp_path), "--ca-bundle", str(tmp_path / "ca.pem")],
                         no_proxy_env())  # fmt: skip
        port = sim.base_url.rsplit(":", 1)[1]
        assert result.exit_code == 2, result.stderr
        assert f"TLS certificate of 127.0.0.1:{port} refused: wrong name" in result.stderr
        assert len(sim.ledger.entries) == 0
    finally:
        sim.stop()


def test_preflight_exits_2_on_a_refused_certificate(pki: Pki) -> None:
    sim = tls_sim(pki)
    try:
        port = sim.base_url.rsplit(":", 1)[1]
        result = run_cli(["preflight", "--base-url", f"https://localhost:{port}", "--username", USER],
                         no_proxy_env())  # fmt: skip
        assert result.exit_code == 2, result.stderr
        assert f"FAIL login    TLS certificate of localhost:{port} refused: unknown CA" in result.stderr
    finally:
        sim.stop()
