"""User-facing errors. The CLI prints `error: <message>` on one line and exits with code 2."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or a configuration that contradicts cached artifacts: a message a user can act on."""
