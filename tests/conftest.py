from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import make_sim

from batch_cancel.simulator import ThreadedSimulator


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    s = make_sim()
    try:
        yield s
    finally:
        s.stop()
