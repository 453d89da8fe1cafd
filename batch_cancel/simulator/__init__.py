"""A Genesys Web Services stand-in: REST log-in, outbound-record operations and CometD.

It behaves like GWS 8.5 as documented (see the project's GWS protocol notes), with knobs
for every misbehaviour a batch run must survive, and keeps a ledger of what it was asked
and what it answered so tests can check a run against the server's own account.
"""

from __future__ import annotations

from batch_cancel.simulator.config import FailureStyle, Faults, GatewayBody, RepeatAnswer, SimulatorConfig
from batch_cancel.simulator.ledger import Effect, Ledger, Outcome, PublishEvent, RequestEntry
from batch_cancel.simulator.server import LEDGER_PATH, NOTIFICATIONS_PATH, GwsSimulator
from batch_cancel.simulator.threaded import ThreadedSimulator

__all__ = [
    "LEDGER_PATH",
    "NOTIFICATIONS_PATH",
    "Effect",
    "FailureStyle",
    "Faults",
    "GatewayBody",
    "GwsSimulator",
    "Ledger",
    "Outcome",
    "PublishEvent",
    "RepeatAnswer",
    "RequestEntry",
    "SimulatorConfig",
    "ThreadedSimulator",
]
