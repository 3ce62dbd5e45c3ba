"""An fp32 exponential moving average of the weights, as fairseq's EMA (`--uses-ema --store-ema --ema-fp32`)."""
from __future__ import annotations

from typing import Any

import torch

from distill.errors import UserError

__all__ = ["WeightEMA"]


class WeightEMA:
    """fp32 exponential moving average of a model's floating parameters and buffers (fairseq's EMA, `ema_fp32`):
    after every optimizer step `ema = decay * ema + (1 - decay) * weight`, starting from the initial weights.

    It is checkpointed with the run (`state_dict`), and `swap` puts it into the model for evaluation.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise UserError(f"`ema_decay` must be in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in self._tensors(model)}

    @staticmethod
    def _tensors(model: torch.nn.Module):
        seen = set()
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point() and id(t) not in seen:  # tied weights once
                seen.add(id(t))
                yield name, t

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, t in self._tensors(model):
            self.shadow[name].mul_(self.decay).add_(t.detach().float(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def swap(self, model: torch.nn.Module) -> None:
        """Exchange the model's weights with the average (call twice to restore)."""
        for name, t in self._tensors(model):
            saved = t.detach().float().clone()
            t.copy_(self.shadow[name].to(t.dtype))
            self.shadow[name].copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
