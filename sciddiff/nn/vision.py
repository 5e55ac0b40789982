"""A small ResNet-style image encoder with GroupNorm and a spatial-softmax head (as in Diffusion Policy's vision
backbone, scaled down to train in minutes and run in milliseconds on a CPU).

Input: float images (B, C, H, W), values in [-1, 1]. Output: (B, out_dim) features. GroupNorm instead of BatchNorm
because the encoder is trained end to end with an EMA copy (BatchNorm statistics do not average well); spatial
softmax keeps "where" information (expected x, y of K learned feature maps, in [-1, 1]) that global pooling discards.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ResBlock2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, n_groups: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.GroupNorm(n_groups, c_out),
        )
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(n_groups, c_out))
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) -> (B, 2K): softmax over positions of K 1x1-projected maps, then expected (x, y) in [-1, 1]."""

    def __init__(self, c_in: int, num_keypoints: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, num_keypoints, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        attn = self.proj(x).flatten(2).float().softmax(-1)  # (B, K, H*W); fp32 softmax for bf16 stability
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        # multiply-and-sum instead of a matmul so that autocast keeps the expectation in fp32
        expected = torch.stack([(attn * xs.flatten()).sum(-1), (attn * ys.flatten()).sum(-1)], -1)  # (B, K, 2)
        return expected.flatten(1)


class ImageEncoder(nn.Module):
    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (32, 64, 128), num_keypoints: int = 32,
                 out_dim: int = 64, n_groups: int = 8, out_norm: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, stride=2, padding=1, bias=False),
                                  nn.GroupNorm(n_groups, channels[0]), nn.Mish())
        stages, c_prev = [], channels[0]
        for i, c in enumerate(channels):
            stages.append(ResBlock2d(c_prev, c, stride=1 if i == 0 else 2, n_groups=n_groups))
            c_prev = c
        self.stages = nn.Sequential(*stages)
        self.pool = SpatialSoftmax(c_prev, num_keypoints)
        # out_norm=False leaves the features unnormalized, for encoders that regress coordinates
        self.out = nn.Sequential(nn.Linear(2 * num_keypoints, out_dim), nn.LayerNorm(out_dim) if out_norm else nn.Identity())
        self.out_dim = out_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.stages(self.stem(image))).to(image.dtype))
