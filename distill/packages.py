"""Installed package versions, as the manifests, cards and metric names record them."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version(name: str = "narvl-pipe") -> str:
    """The installed version of `name`, or "unknown" (running from a source tree that is not installed)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
