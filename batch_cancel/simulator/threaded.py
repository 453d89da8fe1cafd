"""The simulator on a background thread, for tests whose client runs in another process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from batch_cancel.simulator.config import Faults, SimulatorConfig
from batch_cancel.simulator.ledger import Ledger
from batch_cancel.simulator.server import GwsSimulator

__all__ = ["ThreadedSimulator"]

_T = TypeVar("_T")
_START_TIMEOUT = 10.0


class ThreadedSimulator:
    """Owns a thread running its own event loop; the ledger stays readable after stop()."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._sim = GwsSimulator(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gws-simulator", daemon=True)

    def start(self) -> ThreadedSimulator:
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("the GWS simulator did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(event.set)
        self._thread.join()

    def __enter__(self) -> ThreadedSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self._sim.base_url

    @property
    def ledger(self) -> Ledger:
        return self._sim.ledger

    @property
    def simulator(self) -> GwsSimulator:
        return self._sim

    # The knobs mutate loop-owned state (and wake futures), so they run on the loop.
    def set_faults(self, faults: Faults) -> None:
        self._on_loop(lambda: self._sim.set_faults(faults))

    def drop_all_clients(self) -> int:
        return self._on_loop(self._sim.drop_all_clients)

    def pause_cometd(self, seconds: float) -> None:
        self._on_loop(lambda: self._sim.pause_cometd(seconds))

    def serve_login_page(self, status: int, seconds: float = float("inf"), *,
                         everywhere: bool = False) -> None:  # fmt: skip
        self._on_loop(lambda: self._sim.serve_login_page(status, seconds, everywhere=everywhere))

    def restart_node(self, seconds: float = 6.0, retry_after: float | None = 2.0) -> None:
        self._on_loop(lambda: self._sim.restart_node(seconds, retry_after))

    def half_open_polls(self, seconds: float) -> None:
        self._on_loop(lambda: self._sim.half_open_polls(seconds))

    def expire_all_sessions(self) -> int:
        return self._on_loop(self._sim.expire_all_sessions)

    def _on_loop(self, func: Callable[[], _T]) -> _T:
        if self._loop is None:
            raise RuntimeError("the simulator is not running")

        async def call() -> _T:
            return func()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(_START_TIMEOUT)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self._sim.start()
        except BaseException as error:  # handed to the starting thread, re-raised there
            self._error = error
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self._sim.stop()
