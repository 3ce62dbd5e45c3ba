"""`StopSignals`: SIGTERM (a Slurm preemption) and Ctrl-C set a flag that a long loop checks at a safe point (a
batch boundary in `distill`, an optimizer step in training), so that it saves its work and says how to resume,
instead of dying with a traceback; a second Ctrl-C interrupts at once."""
from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """SIGTERM / SIGINT set a flag the loop checks at each batch (a second Ctrl-C interrupts at once)."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
