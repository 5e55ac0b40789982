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
        return self.modulated(x, *film_scale_bias(self.film(cond), [self.film[1].out_features]))

    def modulated(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The block given its FiLM scale and bias, each `(B, c_out, 1)`."""
        h = self.block2(torch.addcmul(bias, scale, self.block1(x)))
        return h + self.skip(x)


def film_scale_bias(film: torch.Tensor, widths: Sequence[int]) -> list[torch.Tensor]:
    """FiLM outputs of blocks side by side, `(B, sum(widths))`, each block's `2 c` columns its scales then its biases
    -> [scale_1, bias_1, scale_2, ...], each `(B, c_i, 1)` (views: one split, not one per block)."""
    return list(film.unsqueeze(-1).split([w // 2 for w in widths for _ in range(2)], dim=1))


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
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(sample.shape[0]) if t.ndim == 0 else t
        cond = self.step_mlp(sinusoidal_embedding(t.float(), self.step_embed_dim).to(sample.dtype))
        if global_cond is not None:
            cond = torch.cat([cond, global_cond.to(cond.dtype)], dim=-1)
        blocks = self.residual_blocks()
        film = torch.cat([res.film(cond) for res in blocks], dim=1)
        return self.modulated(sample, film_scale_bias(film, [res.film[1].out_features for res in blocks]))

    def residual_blocks(self) -> list[ConditionalResidualBlock1D]:
        """The FiLM-conditioned blocks in the order `modulated` applies them."""
        return [res for level in self.down for res in level[:2]] + list(self.mid) + [
            res for level in self.up for res in level[:2]]

    def modulated(self, sample: torch.Tensor, films: list[torch.Tensor]) -> torch.Tensor:
        """The network given every residual block's FiLM scale and bias (`film_scale_bias`), in `residual_blocks`
        order."""
        x, films, skips = sample.transpose(1, 2), iter(zip(films[::2], films[1::2])), []
        for res1, res2, downsample in self.down:
            x = res2.modulated(res1.modulated(x, *next(films)), *next(films))
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res.modulated(x, *next(films))
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2.modulated(res1.modulated(x, *next(films)), *next(films)))
        return self.final(x).transpose(1, 2)


class TimestepFiLMTable(nn.Module):
    """Inference copy of a `ConditionalUnet1D` for integer timesteps 0..T-1 whose FiLM maps skip the timestep MLP.

    Every FiLM layer computes W [Mish(step_mlp(emb(t))); Mish(global_cond)] + b; Mish acts elementwise, so this is
    W_t Mish(step_mlp(emb(t))) + W_c Mish(global_cond) + b. The first term (with b) depends on t alone and is kept as
    one float32 table (T, sum of FiLM widths); a call costs a row lookup and one small product with the condition
    instead of the step MLP and the FiLM weights (for the PushT policy 2.9 of its 18 MB of float32 weights).
    Same function up to float rounding, for timesteps that are integers in [0, T).
    """

    def __init__(self, unet: ConditionalUnet1D, num_timesteps: int):
        super().__init__()
        self.unet = unet
        blocks, e = unet.residual_blocks(), unet.step_embed_dim
        weight = torch.cat([res.film[1].weight.detach() for res in blocks])  # (sum F, e + C)
        bias = torch.cat([res.film[1].bias.detach() for res in blocks])
        self.widths = [res.film[1].out_features for res in blocks]
        with torch.no_grad():
            t = torch.arange(num_timesteps, dtype=torch.float32)
            step = nn.functional.mish(unet.step_mlp(sinusoidal_embedding(t, e)))
            self.register_buffer("table", step @ weight[:, :e].t() + bias)  # (T, sum F)
        self.register_buffer("cond_weight", weight[:, e:].t().contiguous())  # (C, sum F)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int,
                global_cond: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=sample.device).long()
        film = self.table.index_select(0, t.expand(sample.shape[0]) if t.ndim == 0 else t)  # 1/3 of indexing's cost
        if global_cond is not None:
            film = film + nn.functional.mish(global_cond.to(film.dtype)) @ self.cond_weight
        return self.unet.modulated(sample, film_scale_bias(film, self.widths))


class MatmulConv1d(nn.Module):
    """Inference copy of an `nn.Conv1d` (groups 1, dilation 1, zero padding) computed as one matmul over gathered windows.

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
    def supports_transposed(deconv: nn.ConvTranspose1d) -> bool:
        return (deconv.groups == 1 and deconv.dilation == (1,) and deconv.output_padding == (0,)
                and deconv.padding_mode == "zeros" and deconv.padding[0] <= deconv.kernel_size[0] - 1)

    @staticmethod
    def int8_available(conv: nn.Conv1d) -> bool:
        return hasattr(torch, "_weight_int8pack_mm") and conv.in_channels * conv.kernel_size[0] % 16 == 0

    def __init__(self, conv: nn.Conv1d, int8_weights: bool = False, upsample: int = 1):
        super().__init__()
        if not self.supports(conv):
            raise ValueError("MatmulConv1d supports plain convolutions only")
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.upsample = upsample  # > 1: zeros inserted between input samples first (a transposed convolution)
        weight = conv.weight.detach().transpose(1, 2).flatten(1)  # (O, K*C): a window's K positions, C channels each
        self.int8 = int8_weights and self.int8_available(conv)
        if self.int8:
            scales = weight.abs().amax(1).clamp_min(1e-12) / 127
            self.register_buffer("weight", torch.round(weight / scales[:, None]).to(torch.int8))  # (O, K*C)
            self.register_buffer("scales", scales.bfloat16())
        else:
            self.register_buffer("weight", weight.t().contiguous())  # (K*C, O)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias.clone())
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.pointwise = self.kernel == 1 and self.stride == 1 and self.padding == 0 and upsample == 1
        self._windows: dict[int, torch.Tensor] = {}
        self._bias_maps: dict[int, torch.Tensor] = {}

    @classmethod
    def from_transposed(cls, deconv: nn.ConvTranspose1d, int8_weights: bool = False) -> MatmulConv1d:
        """A `ConvTranspose1d` (groups 1, dilation 1, no output padding) as the equivalent convolution of the
        zero-upsampled input: flipped kernel, in/out channels swapped, padding K - 1 - p. PyTorch's CPU path for
        these small transposed convolutions is ~200 us a call; this is a few tens."""
        if not cls.supports_transposed(deconv):
            raise ValueError("MatmulConv1d.from_transposed supports plain transposed convolutions only")
        k, p = deconv.kernel_size[0], deconv.padding[0]
        conv = nn.Conv1d(deconv.in_channels, deconv.out_channels, k, padding=k - 1 - p, bias=deconv.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(deconv.weight.transpose(0, 1).flip(-1))
            if deconv.bias is not None:
                conv.bias.copy_(deconv.bias)
        return cls(conv, int8_weights, upsample=deconv.stride[0])

    def windows(self, length: int) -> torch.Tensor:
        """(L_out * K,) index of each window position into the input's samples, `length` where the (zero-upsampled,
        zero-padded) input is zero; cached per length (run the module once before tracing it, so that the trace holds
        the index as a constant)."""
        if length not in self._windows:  # in integers, not tensors: a trace must not record this
            k, u, p, s = self.kernel, self.upsample, self.padding, self.stride
            n_out = ((length - 1) * u + 1 + 2 * p - k) // s + 1
            q = [i * s + j - p for i in range(n_out) for j in range(k)]  # positions in the upsampled input
            self._windows[length] = torch.tensor([v // u if v >= 0 and v % u == 0 and v // u < length else length
                                                  for v in q])
        return self._windows[length]

    def bias_map(self, n_out: int) -> torch.Tensor:
        """The bias as a contiguous `(O, n_out)` map, cached per output length (see `forward`)."""
        if n_out not in self._bias_maps:
            self._bias_maps[n_out] = self.bias[:, None].expand(-1, n_out).contiguous()
        return self._bias_maps[n_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # At these sizes every op costs its dispatch, so the fewer the better: one gather builds the (L_out, K*C)
        # windows from [x, 0] in (L, C) layout, padding and zero-upsampling folded into its index; shapes come from
        # the layer and the cached index, not x.shape, so a trace holds them as constants. No hidden copies: the
        # gather reads a contiguous input (x transposed and, for int8 weights, cast to bf16 in one copy, before the
        # K-times larger rows exist), and the bias is the first operand of the last add, whose result is then
        # channel-major and contiguous for the GroupNorm after it.
        index = self.windows(int(x.shape[-1]))
        n_out = index.numel() // self.kernel
        x = x.transpose(1, 2)
        x = x.to(torch.bfloat16, memory_format=torch.contiguous_format) if self.int8 else x.contiguous()
        if self.pointwise:  # the windows are the samples
            rows = x.view(-1, self.in_channels)
        else:
            x = nn.functional.pad(x, (0, 0, 0, 1))  # the zero sample
            rows = x.index_select(1, index).view(-1, self.kernel * self.in_channels)
        if self.int8:
            out = torch._weight_int8pack_mm(rows, self.weight, self.scales)  # bf16; the bias add returns float32
        else:
            out = rows @ self.weight
        return torch.add(self.bias_map(n_out), out.view(-1, n_out, self.out_channels).transpose(1, 2))


def with_matmul_convs(module: nn.Module, int8_weights: bool = False) -> nn.Module:
    """A deep copy of `module` with every plain `nn.Conv1d` and `nn.ConvTranspose1d` replaced by `MatmulConv1d` (for
    CPU inference)."""
    module = copy.deepcopy(module)
    for child in list(module.modules()):
        for attr, sub in list(child.named_children()):
            if type(sub) is nn.Conv1d and MatmulConv1d.supports(sub):
                setattr(child, attr, MatmulConv1d(sub, int8_weights))
            elif type(sub) is nn.ConvTranspose1d and MatmulConv1d.supports_transposed(sub):
                setattr(child, attr, MatmulConv1d.from_transposed(sub, int8_weights))
    return module
