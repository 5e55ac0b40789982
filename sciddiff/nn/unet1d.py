"""Conditional 1D temporal U-Net of Diffusion Policy (Chi et al., RSS 2023), FiLM-conditioned.

Conventions: a sample is a trajectory `(B, T, D)` (time-major, D channels such as a 2-D action); internally the net
works channel-first `(B, D, T)`. The condition is the diffusion timestep (integer index or float, `(B,)` or scalar) embedded
sinusoidally, concatenated with an optional global condition vector `(B, C)` (the flattened observation history). Every
residual block maps that condition to a per-channel scale and bias (FiLM) applied after its first convolution.
T must be divisible by 2**(len(down_dims) - 1) (16 with three levels works).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from sciddiff.nn.embeddings import sinusoidal_embedding


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int = 8):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; FiLM (scale, bias) from the condition between them; 1x1 conv on the skip if widths differ."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        self.block1 = Conv1dBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = Conv1dBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        h = self.block1(x)
        h = self.block2(scale * h + bias)
        return h + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser eps/x0(sample, timestep, global_cond) for trajectories `(B, T, input_dim)`."""

    def __init__(
        self,
        input_dim: int,
        global_cond_dim: int = 0,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 128,
    ):
        super().__init__()
        dims = [input_dim, *down_dims]
        self.step_embed_dim = diffusion_step_embed_dim
        self.step_mlp = nn.Sequential(
            nn.Linear(diffusion_step_embed_dim, 4 * diffusion_step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * diffusion_step_embed_dim, diffusion_step_embed_dim),
        )
        cond_dim = diffusion_step_embed_dim + global_cond_dim

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(c_in, c_out, cond_dim, kernel_size, n_groups)

        n_levels = len(down_dims)
        self.down = nn.ModuleList()
        for level, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = level == n_levels - 1
            self.down.append(nn.ModuleList([
                block(c_in, c_out),
                block(c_out, c_out),
                nn.Identity() if last else nn.Conv1d(c_out, c_out, 3, stride=2, padding=1),
            ]))
        self.mid = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        self.up = nn.ModuleList()
        # Mirror of the down path without its outermost level; skips are concatenated channel-wise.
        for c_out, c_in in reversed(list(zip(dims[1:-1], dims[2:]))):
            self.up.append(nn.ModuleList([
                block(2 * c_in, c_out),
                block(c_out, c_out),
                nn.ConvTranspose1d(c_out, c_out, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], input_dim, 1))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        """sample (B, T, D), timestep scalar or (B,), global_cond (B, C) -> (B, T, D)."""
        x = sample.transpose(1, 2)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        cond = self.step_mlp(sinusoidal_embedding(t.float(), self.step_embed_dim).to(x.dtype))
        if global_cond is not None:
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)

        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, cond), cond))
        return self.final(x).transpose(1, 2)


class MatmulConv1d(nn.Module):
    """Inference copy of an `nn.Conv1d` (groups 1, dilation 1, zero padding) computed as one matmul over unfolded windows.

    Why: for the U-Net's small inputs (batch 1, length 4-16) PyTorch's CPU conv1d takes its generic im2col path, which
    costs ~100 us a call at 64-512 channels; the same product as one GEMM is 2-4x faster (docs/benchmarks.md).

    `int8_weights=True` stores the weight as int8 with one float scale per output channel (symmetric, absmax / 127) and
    multiplies bf16 activations by it (`torch._weight_int8pack_mm`, PyTorch's weight-only int8 CPU kernel, as in
    gpt-fast): at batch 1 these GEMMs are bound by reading the weights, and int8 reads 4x fewer bytes (2-3.7x faster
    on 256-channel layers). Layers whose C*K is not a multiple of 16 (the kernel's requirement) stay float32.
    """

    @staticmethod
    def supports(conv: nn.Conv1d) -> bool:
        return conv.groups == 1 and conv.dilation == (1,) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)

    @staticmethod
    def int8_available(conv: nn.Conv1d) -> bool:
        return hasattr(torch, "_weight_int8pack_mm") and conv.in_channels * conv.kernel_size[0] % 16 == 0

    def __init__(self, conv: nn.Conv1d, int8_weights: bool = False):
        super().__init__()
        if not self.supports(conv):
            raise ValueError("MatmulConv1d supports plain convolutions only")
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        weight = conv.weight.detach().flatten(1)  # (O, C*K)
        self.int8 = int8_weights and self.int8_available(conv)
        if self.int8:
            scales = weight.abs().amax(1).clamp_min(1e-12) / 127
            self.register_buffer("weight", torch.round(weight / scales[:, None]).to(torch.int8))  # (O, C*K)
            self.register_buffer("scales", scales.bfloat16())
        else:
            self.register_buffer("weight", weight.t().contiguous())  # (C*K, O)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (self.padding, self.padding))
        windows = x.unfold(2, self.kernel, self.stride)  # (B, C, L_out, K)
        cols = windows.permute(0, 2, 1, 3).flatten(2)  # (B, L_out, C*K), the weight's (C, K) order
        if self.int8:
            rows = cols.flatten(0, 1).to(torch.bfloat16, memory_format=torch.contiguous_format)
            out = torch._weight_int8pack_mm(rows, self.weight, self.scales).float() + self.bias
        else:
            out = torch.addmm(self.bias, cols.flatten(0, 1), self.weight)
        return out.unflatten(0, cols.shape[:2]).transpose(1, 2)


def with_matmul_convs(module: nn.Module, int8_weights: bool = False) -> nn.Module:
    """A deep copy of `module` with every plain `nn.Conv1d` replaced by `MatmulConv1d` (for CPU inference)."""
    module = copy.deepcopy(module)
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if type(sub) is nn.Conv1d and MatmulConv1d.supports(sub):
                setattr(child, attr, MatmulConv1d(sub, int8_weights))
    return module
