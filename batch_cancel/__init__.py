"""batch-cancel: pull phone numbers out of live Genesys outbound campaigns, provably.

The library's public surface is listed in ``__all__``; everything else is internal.
Names are imported on first use (PEP 562), so ``import batch_cancel`` and the
command line's ``--help`` stay fast::

    import asyncio
    from batch_cancel import Credentials, GwsConfig, JobDefaults, RunConfig, run_job

    summary = asyncio.run(run_job(RunConfig(...), GwsConfig(...)))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "AbortedError",
    "BatchCancelError",
    "ConfigError",
    "Credentials",
    "GwsConfig",
    "InputError",
    "JobDefaults",
    "RunConfig",
    "Summary",
    "UsageError",
    "__version__",
    "new_run_id",
    "run_job",
]

_WHERE = {
    "AbortedError": "batch_cancel.exceptions",
    "BatchCancelError": "batch_cancel.exceptions",
    "ConfigError": "batch_cancel.exceptions",
    "InputError": "batch_cancel.exceptions",
    "UsageError": "batch_cancel.exceptions",
    "Credentials": "batch_cancel.config",
    "GwsConfig": "batch_cancel.config",
    "JobDefaults": "batch_cancel.config",
    "RunConfig": "batch_cancel.config",
    "Summary": "batch_cancel.summary",
    "new_run_id": "batch_cancel.job",
    "run_job": "batch_cancel.job",
}

if TYPE_CHECKING:
    from batch_cancel.config import Credentials, GwsConfig, JobDefaults, RunConfig
    from batch_cancel.exceptions import AbortedError, BatchCancelError, ConfigError, InputError, UsageError
    from batch_cancel.job import new_run_id, run_job
    from batch_cancel.summary import Summary


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'batch_cancel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
