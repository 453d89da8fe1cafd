"""Object storage (``s3://``, ``gs://``, ``az://``) through fsspec, for inputs and outputs.

Why fsspec (s3fs, gcsfs, adlfs) and not pyarrow's filesystems, measured and read
(benchmarks/object_storage.py, README "Object storage"):

* what a resume must compare: fsspec answers an object's ``ETag`` and ``VersionId``;
  pyarrow's ``FileInfo`` has neither;
* the endpoint: s3fs goes through botocore, which reads ``AWS_ENDPOINT_URL`` (and
  profiles, instance roles, SSO) itself; pyarrow's S3 ignores that variable;
* Airflow's ``ObjectStoragePath`` is fsspec, so an Airflow worker with the Amazon,
  Google or Azure provider already has s3fs, gcsfs or adlfs;
* reading the same object, both stream in bounded memory (ranged GETs).

Credentials are never ours: each filesystem finds them as its cloud's SDK does
(environment, profile, instance role); no option takes a secret and no message
carries one. A versioned object is read at the version first seen, and s3fs reads
with ``If-Match`` on the ETag, so a run never plans from bytes other than those it
hashed. Third-party exceptions become ours here, and only here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TypeAlias
from urllib.parse import unquote, urlsplit

from batch_cancel.exceptions import BatchCancelError, ConfigError, InputError

__all__ = ["Location", "ObjectInfo", "ObjectUrl", "canonical", "location", "object_info", "open_object",
           "prove_writable", "write_object"]

# scheme -> (fsspec protocol, the package that implements it, our extra that installs it)
_SCHEMES = {
    "s3": ("s3", "s3fs", "s3"), "s3a": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gs"), "gcs": ("gcs", "gcsfs", "gs"),
    "az": ("abfs", "adlfs", "az"), "abfs": ("abfs", "adlfs", "az"), "abfss": ("abfs", "adlfs", "az"),
}  # fmt: skip
# read in blocks this size (s3fs' default is 50 MiB with its readahead cache: per open file,
# that is what a read holds; 8 MiB measured as fast against a local S3 endpoint)
_READ_BLOCK = 8 << 20
# who wrote an output, as object metadata (what makes an existing object "ours" is its
# content, as for a local file: output_paths.py; this is for people and audits)
_WRITER_TAG = {"generator": "batch-cancel"}


@dataclass(frozen=True)
class ObjectUrl:
    """An object's URL, as given (``s3://bucket/key``)."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def key(self) -> str:
        """``bucket/key`` as fsspec names it."""
        return self.url.split("://", 1)[1]

    @property
    def name(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    def with_name(self, name: str) -> ObjectUrl:
        return ObjectUrl(self.url.rstrip("/").rsplit("/", 1)[0] + "/" + name)


Location: TypeAlias = Path | ObjectUrl


def canonical(url: ObjectUrl) -> ObjectUrl:
    """One spelling per object: the scheme's family (s3a:// is s3://) and the key as given."""
    family = {"s3": "s3", "gcs": "gs", "abfs": "az"}[_SCHEMES[url.scheme][0]]
    return ObjectUrl(f"{family}://{url.key}")


def location(text: str | Path | ObjectUrl) -> Location:
    """A command-line value as a local path or an object URL; ``file://`` is a local path."""
    if isinstance(text, (Path, ObjectUrl)):
        return text
    if "://" not in text:
        return Path(text)
    scheme, rest = text.split("://", 1)
    if scheme.lower() == "file":
        from urllib.request import url2pathname  # 25 ms of start-up for a rare case

        parts = urlsplit(text)
        return Path(url2pathname(unquote(parts.path)))
    if scheme.lower() not in _SCHEMES:
        raise ConfigError(f"{text}: unknown scheme {scheme}:// (local paths, file://, s3://, gs:// "
                          "or az://)")  # fmt: skip
    if "/" not in rest.strip("/"):
        raise ConfigError(f"{text}: give bucket/key, not only a bucket")
    return ObjectUrl(text)


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # "" where the store has none
    version_id: str  # "" unless the bucket keeps versions


_CREDENTIAL_VARS = ("AWS_", "GOOGLE_", "GCE_", "AZURE_")
_INSTANCES: dict[tuple[str, str], Any] = {}


def _filesystem(url: ObjectUrl) -> Any:
    """One filesystem per protocol and per environment: fsspec's own instance cache ignores
    the environment, so a process whose AWS_ENDPOINT_URL or keys changed (a library caller,
    the tests) would go on talking to the old endpoint with the old keys."""
    protocol, package, extra = _SCHEMES[url.scheme]
    ambient = sorted((k, v) for k, v in os.environ.items() if k.startswith(_CREDENTIAL_VARS))
    setting = hashlib.sha256(repr(ambient).encode()).hexdigest()
    known = _INSTANCES.get((protocol, setting))
    if known is not None:
        return known
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"{url}: object storage needs fsspec and {package}: "
                          f"pip install 'batch-cancel[{extra}]'") from None  # fmt: skip
    try:
        # version_aware: the VersionId of what was hashed is the version read afterwards
        options = {"version_aware": True} if protocol == "s3" else {}
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    except ImportError:
        raise ConfigError(f"{url}: {url.scheme}:// needs {package}: "
                          f"pip install 'batch-cancel[{extra}]'") from None  # fmt: skip
    _INSTANCES[(protocol, setting)] = fs
    return fs


def _problem(exc: BaseException) -> str:
    """What went wrong, in one line, with no secret (botocore's messages name none)."""
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return "no such object"
    if isinstance(exc, PermissionError) or name in ("NoCredentialsError", "PartialCredentialsError"):
        detail = (str(exc).splitlines() or [name])[0] or name
        return (f"access denied ({detail}); check the credentials the cloud's SDK finds "
                "(environment, profile, instance role)")  # fmt: skip
    if name == "FileExpired":
        return "the object was replaced while it was being read; run again"
    if isinstance(exc, IsADirectoryError):
        return "is a folder (a prefix), not an object"
    first = (str(exc).splitlines() or [name])[0]
    return f"cannot be reached or read ({name}: {first})"


def _raise(url: ObjectUrl, exc: BaseException, error: type[BatchCancelError] = InputError) -> NoReturn:
    """The one place where the storage libraries' errors become ours."""
    if isinstance(exc, BatchCancelError):
        raise exc
    raise error(f"{url}: {_problem(exc)}") from None


def object_info(url: ObjectUrl) -> ObjectInfo | None:
    """Size, ETag and version of an object; None when there is none at that key."""
    fs = _filesystem(url)
    try:
        info = fs.info(url.key)
    except FileNotFoundError:
        return None
    except Exception as exc:
        _raise(url, exc)
    if info.get("type") == "directory":
        raise InputError(f"{url}: is a folder (a prefix), not an object")
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    version = info.get("VersionId") or info.get("generation") or info.get("version_id") or ""
    return ObjectInfo(int(info.get("size") or 0), etag, "" if version in ("null", None) else str(version))


class _Guarded(io.RawIOBase):
    """A readable object whose storage errors arrive as InputError naming the URL."""

    def __init__(self, url: ObjectUrl, raw: Any) -> None:
        super().__init__()
        self._url, self._raw = url, raw

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except Exception as exc:
            _raise(self._url, exc)
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self._raw.tell())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()

    @property
    def size(self) -> int:
        return int(self._raw.size)


def open_object(url: ObjectUrl, version_id: str = "") -> BinaryIO:
    """The object's bytes, read as they are asked for (ranged GETs), at ``version_id`` if given."""
    fs = _filesystem(url)
    options: dict[str, Any] = {"block_size": _READ_BLOCK}
    if version_id:
        options["version_id"] = version_id
    try:
        raw = fs.open(url.key, "rb", **options)
    except Exception as exc:
        _raise(url, exc)
    return io.BufferedReader(_Guarded(url, raw), buffer_size=1 << 20)


def _tag(url: ObjectUrl) -> dict[str, Any]:
    # each filesystem names the object's user metadata its own way
    return {"Metadata": _WRITER_TAG} if url.scheme.startswith("s3") else {"metadata": _WRITER_TAG}


def write_object(url: ObjectUrl, write: Callable[[BinaryIO], object], error: type[BatchCancelError]) -> None:
    """Write the object whole or not at all: parts are uploaded as they come, and the
    upload is completed only when ``write`` returned (fsspec's transaction: multipart
    completed at the end, aborted on any error). Readers see the old object until then."""
    fs = _filesystem(url)
    try:
        with fs.transaction, fs.open(url.key, "wb", **_tag(url)) as f:
            write(f)
    except Exception as exc:
        _raise(url, exc, error)


def prove_writable(name: str, url: ObjectUrl) -> None:
    """Credentials and permissions decide, not the URL: write a small object beside it and remove it."""
    probe = url.with_name(f".batch-cancel-check-{secrets.token_hex(4)}")
    fs = _filesystem(url)
    try:
        fs.pipe_file(probe.key, b"")
        fs.rm_file(probe.key)
    except Exception as exc:
        raise ConfigError(f"{name} {url}: cannot write there: {_problem(exc)}") from None
