"""Placeholder: filled in by the issue that owns this command."""


def distill() -> None:
    """Not built yet."""
    raise SystemExit("narvl-pipe: this command is not built yet")
