"""batch-cancel: pull phone numbers out of live Genesys outbound campaigns, provably."""

from __future__ import annotations

__version__ = "0.1.0"
