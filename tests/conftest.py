from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import make_sim

from batch_cancel.simulator import ThreadedSimulator

_PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "GWS_PROXY", "GWS_CA_BUNDLE",
               "GWS_CLIENT_CERT", "GWS_CLIENT_KEY")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_ambient_network_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy or CA set on the machine running the tests must not steer their loopback runs."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    s = make_sim()
    try:
        yield s
    finally:
        s.stop()
