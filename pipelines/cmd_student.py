"""Placeholder: filled in by the issue that owns this command."""


def train_student() -> None:
    """Not built yet."""
    raise SystemExit("narvl-pipe: this command is not built yet")


def evaluate() -> None:
    """Not built yet."""
    raise SystemExit("narvl-pipe: this command is not built yet")


def predict() -> None:
    """Not built yet."""
    raise SystemExit("narvl-pipe: this command is not built yet")
