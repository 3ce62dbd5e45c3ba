"""`ServeConfig`: what `narvl-pipe serve` takes (its options are generated from it). Apart from `pipelines.serve`,
which needs the optional `serve` extra (fastapi, uvicorn)."""
from __future__ import annotations

from dataclasses import dataclass

from distill.errors import UserError

__all__ = ["ServeConfig"]


@dataclass
class ServeConfig:
    """Settings of `narvl-pipe serve`."""

    model: str
    """Any model that distils or is distilled: a NARVL student folder, its ONNX export, an OFA or a transformers
    teacher (a folder or a Hub id)."""
    task: str | None = None
    """Task served; None: the one the student was trained for (a teacher needs it)."""
    host: str = "127.0.0.1"
    """Interface to listen on (`0.0.0.0` for all)."""
    port: int = 8000
    """TCP port."""
    max_batch_size: int = 8
    """Most requests answered by one model call."""
    batch_timeout_ms: float = 0.0
    """How long a batch waits for more requests after its first one. 0: a batch is the requests that queued while
    the model ran the previous one, and the model never idles; waiting pays where a larger batch costs little more
    than a small one (a GPU), and costs every lone request that long."""
    answers: str | None = None
    """VQA candidate answer list file, for a model that decodes over an answer list (OFA)."""
    device: str | None = None
    """Device of the model (default: CUDA when available)."""
    max_request_mb: float = 4.0
    """Largest request body accepted, in MiB; a larger one is answered 413 before it is read in full (a 50 MB body
    would otherwise be decoded while the model waits)."""

    def __post_init__(self):
        if self.max_request_mb <= 0:
            raise UserError(f"`max_request_mb` must be > 0, got {self.max_request_mb}")
        if self.max_batch_size < 1:
            raise UserError(f"`max_batch_size` must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout_ms < 0:
            raise UserError(f"`batch_timeout_ms` must be >= 0, got {self.batch_timeout_ms}")
        if not 0 <= self.port <= 65535:
            raise UserError(f"`port` must be in 0..65535, got {self.port}")
