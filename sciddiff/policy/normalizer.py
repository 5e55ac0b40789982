"""Per-dimension min-max normalization to [-1, 1], stored as buffers so it travels inside the policy's state_dict.

Fit on the training data (last axis = feature dimension). A dimension that never varies (range below `eps`) is only
centred, not scaled, so it maps to 0 instead of blowing up. Images are not fitted: uint8 pixels map to [-1, 1] with
the fixed `pixels_to_unit` below.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class MinMaxNormalizer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("low", torch.full((dim,), -1.0))
        self.register_buffer("high", torch.full((dim,), 1.0))

    @classmethod
    def fit(cls, data: np.ndarray | torch.Tensor, eps: float = 1e-4) -> MinMaxNormalizer:
        data = torch.as_tensor(np.asarray(data), dtype=torch.float64).reshape(-1, np.shape(data)[-1])
        norm = cls(data.shape[-1])
        low, high = data.min(0).values, data.max(0).values
        flat = (high - low) < eps
        centre = (low + high) / 2
        norm.low.copy_(torch.where(flat, centre - 1, low).float())
        norm.high.copy_(torch.where(flat, centre + 1, high).float())
        return norm

    def dims_beyond(self, data: np.ndarray | torch.Tensor, tolerance: float = 0.02) -> list[int]:
        """The features of `data` (..., dim) that reach beyond [low, high] by more than `tolerance` of its width: data
        this normalizer was not fitted on, mapped outside [-1, 1]."""
        data = torch.as_tensor(np.asarray(data), dtype=torch.float64).reshape(-1, np.shape(data)[-1])
        slack = tolerance * (self.high - self.low).double()
        beyond = (data.min(0).values < self.low.double() - slack) | (data.max(0).values > self.high.double() + slack)
        return torch.nonzero(beyond)[:, 0].tolist()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.low) / (self.high - self.low) * 2 - 1

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y + 1) / 2 * (self.high - self.low) + self.low


def pixels_to_unit(image: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0..255 float) pixels -> float in [-1, 1]."""
    return image.float() / 127.5 - 1.0
