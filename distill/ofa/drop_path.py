"""Stochastic depth (drop-path), shared by OFA's ResNet blocks and its transformer layers."""
import torch
from torch import nn


def linear_rates(max_rate: float, count: int) -> list[float]:
    """Drop-path rates growing linearly from 0 to max_rate over `count` blocks (plain floats: works on `meta`)."""
    return [max_rate * i / (count - 1) if count > 1 else 0.0 for i in range(count)]


class DropPath(nn.Module):
    """Drop the whole residual branch per sample with probability `p` (training only). x (B, ...) -> (B, ...)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"
