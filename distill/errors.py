"""User-facing errors. The CLI prints `error: <message>` on one line and exits with code 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a configuration that contradicts cached artifacts: a message a user can act on."""


class Interrupted(UserError):
    """SIGTERM (a Slurm preemption) or Ctrl-C: the command saved what it had (flushed shards, a checkpoint) and says
    how to resume. The CLI exits with 128 + the signal number, as a process killed by it would."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 128 + {"SIGINT": 2, "SIGTERM": 15}.get(signal_name, 0)


def error_reason(err: BaseException) -> str:
    """One line saying why a call failed (a Hub request, a download): the error's first non-empty line and its class;
    the class alone says too little, and `str(err)` may be empty or span lines."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{first} ({type(err).__name__})" if first else type(err).__name__
