"""An exported NARVL student run by onnxruntime, with `NARVLModel`'s forward interface (`config`, `device`,
`__call__(...).logits`), so `student.runner.NARVLStudent` runs either backend with one decoding."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distill.errors import UserError

from .configuration_narvl import NARVLConfig
from .export import ExportSpec, read_spec
from .modeling_narvl import NARVLOutput

__all__ = ["ONNXNARVLModel"]


def _providers(device: str | torch.device | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    kind = None if device is None else torch.device(device).type
    if kind == "cuda" and "CUDAExecutionProvider" not in available:
        raise UserError("device cuda asked, but this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    if kind in (None, "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ONNXNARVLModel:
    """onnxruntime session over `model.onnx` of an export folder. Logits come back as CPU tensors."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None,
                 num_threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.spec: ExportSpec = read_spec(self.path)
        self.config = NARVLConfig.from_pretrained(str(self.path))
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(str(self.path / self.spec.file), options, providers=_providers(device))
        # Where callers put inputs: ORT copies host arrays to its provider itself.
        self.device = torch.device("cpu")

    @property
    def blank_id(self) -> int:
        return self.spec.blank_id

    def __call__(self, input_ids: torch.Tensor, patch_images: torch.Tensor | None = None,
                 patch_masks: torch.Tensor | None = None, **_) -> NARVLOutput:
        """input_ids (B, L) right-padded, patch_images (B, 3, S, S) -> `NARVLOutput` with ``logits`` (B, N, V + 1).
        `patch_masks` is ignored, as by `NARVLModel`."""
        if patch_images is None:
            raise ValueError("the exported graph takes images: patch_images is required")
        if input_ids.shape[1] > self.spec.max_prompt_length:
            raise UserError(f"prompt of {input_ids.shape[1]} tokens is longer than the export's max_prompt_length "
                            f"{self.spec.max_prompt_length}")
        feed = {"input_ids": input_ids.detach().cpu().numpy().astype(np.int64),
                "patch_images": patch_images.detach().cpu().numpy().astype(np.float32)}
        (logits,) = self.session.run(["logits"], feed)
        return NARVLOutput(logits=torch.from_numpy(logits))
