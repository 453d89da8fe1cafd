"""Airflow needs its home and database before it is first imported: set them up here.

These tests run only in .venv-airflow (`make airflow-test`), never in the main suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HOME = Path(tempfile.mkdtemp(prefix="airflow-home-"))
os.environ.update({
    "AIRFLOW_HOME": str(HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[1]),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "BATCH_CANCEL_SHARDS": "3",  # read when the DAG file is parsed
    "BATCH_CANCEL_WORKERS": "3",
    "BATCH_CANCEL_RETRIES": "1",
    "BATCH_CANCEL_RETRY_DELAY_S": "1",
})  # fmt: skip


def pytest_configure() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)


def pytest_unconfigure() -> None:
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The main suite's PostgreSQL server helper (tests/pg_server.py): Debian's binaries in a
    temporary data directory; skipped, loudly, only where no server can be started."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
    try:
        from pg_server import serve
    finally:
        sys.path.pop(0)
    yield from serve()
