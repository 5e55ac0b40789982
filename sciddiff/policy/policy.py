"""Diffusion Policy (Chi et al., RSS 2023): denoise a 16-step action trajectory conditioned on the last 2 observations.

Shapes: observations (B, n_obs_steps, ...), action trajectories (B, horizon, action_dim). Actions and low-dimensional
observations are min-max normalized to [-1, 1] by the policy's own normalizers (saved in its state_dict), images
enter as uint8. Time convention: the trajectory covers steps t-1 .. t+14 when the observations are steps t-1, t;
`predict_action` returns the `n_action_steps` actions from step t on (trajectory indices n_obs-1 .. n_obs+n_action-2).
Diffusion: the core's discrete DDPM chain (100 train steps, cosine = squaredcos_cap_v2), epsilon or sample prediction,
few-step DDIM / DPM-Solver++(2M) or full DDPM at inference, samples clipped to [-1, 1].
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from sciddiff.cli import print_note
from sciddiff.core.ddpm import DiscreteSchedule
from sciddiff.core.losses import ddim_distillation_loss, ddpm_loss
from sciddiff.core.samplers import Generators, randn, sample_ddim, sample_ddpm, sample_dpmpp_2m
from sciddiff.nn.unet1d import ConditionalUnet1D, TimestepFiLMTable, with_matmul_convs
from sciddiff.nn.vision import ImageEncoder
from sciddiff.policy.normalizer import MinMaxNormalizer, pixels_to_unit

SAMPLERS = ("ddim", "dpmpp_2m", "ddpm", "ddim_trailing")
DDIM_SPACING = {"ddim": "leading", "ddim_trailing": "trailing"}  # trailing starts at t = T - 1: better with few steps
CPU_WEIGHTS = ("float32", "int8")


def max_noise_scale(sampler: str) -> float:
    """The largest eta `sampler` takes: DDIM any (1: DDPM's posterior noise, inf: the predicted clean sample re-noised
    at every step), DPM-Solver++ 1 (its SDE form); DDPM ignores eta."""
    return 1.0 if sampler == "dpmpp_2m" else float("inf")


def noise_scale_for(eta: float, sampler: str) -> float:
    """A policy's noise scale for `sampler`: its own, or the most that sampler takes (DDIM re-noising, inf, becomes
    DPM-Solver++'s SDE form, 1)."""
    return min(eta, max_noise_scale(sampler))


def fitted_noise_scale(eta: float, sampler: str) -> float:
    """`noise_scale_for`, said in a note on stderr where it differs from the policy's own (the CLI's)."""
    if (fitted := noise_scale_for(eta, sampler)) != eta:
        print_note(f"the policy's noise scale {eta:g} is beyond what {sampler} takes: eta {fitted:g} (--ddim-eta to "
                   "choose)")
    return fitted


def noise_scale_error(eta: float, sampler: str, name: str = "ddim_eta") -> str | None:
    """Why `eta` is no noise scale for `sampler` (None if it is): 0 <= eta <= `max_noise_scale(sampler)`."""
    top = max_noise_scale(sampler)
    if not 0.0 <= eta <= top:
        return f"{name} must be in [0, {top:g}] for the {sampler} sampler, got {eta!r}"
    return None


@dataclass
class PolicyConfig:
    obs_type: str = "state"  # "state": low-dim features; "image": camera frames + agent position
    state_dim: int = 18  # low-dim features per step (state policy) or agent-position dims (image policy)
    action_dim: int = 2
    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int = 8
    down_dims: tuple[int, ...] = (64, 128, 256)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 128
    beta_schedule: str = "cosine"
    num_train_timesteps: int = 100
    prediction_type: str = "epsilon"
    clip_sample: float | None = 1.0
    sampler: str = "ddim"
    num_inference_steps: int = 8
    ddim_eta: float = 0.0  # sampler noise: 0 = deterministic ODE step, 1 = ancestral / SDE step, inf = re-noising (DDIM)
    # Warm starts (DDIM only; 0 = off): a chunk that follows another starts from the previous plan shifted by the
    # executed actions (its tail padded with its last action), noised to the first DDIM grid timestep <= this (SDEdit),
    # and takes only the grid's remaining steps
    warm_start_t: int = 0
    cpu_weights: str = "float32"  # the frozen CPU U-Net's convolution weights: "float32" or "int8" (weight-only)
    image_size: int = 96
    crop_size: int = 84
    vision_channels: tuple[int, ...] = (32, 64, 128)
    vision_keypoints: int = 32
    vision_dim: int = 64
    vision_norm: bool = True  # LayerNorm on the encoder's output features
    extra: dict = field(default_factory=dict)  # free-form notes (task, feature names) carried with the checkpoint

    def __post_init__(self):
        if self.obs_type not in ("state", "image"):
            raise ValueError(f"obs_type must be 'state' or 'image', got {self.obs_type!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if error := noise_scale_error(self.ddim_eta, self.sampler):
            raise ValueError(error)
        if not 0 <= self.warm_start_t < self.num_train_timesteps:
            raise ValueError(f"warm_start_t must be in [0, {self.num_train_timesteps}), got {self.warm_start_t!r}")
        if self.cpu_weights not in CPU_WEIGHTS:
            raise ValueError(f"cpu_weights must be one of {CPU_WEIGHTS}, got {self.cpu_weights!r}")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon:
            raise ValueError("n_obs_steps - 1 + n_action_steps must fit in the horizon")
        self.down_dims, self.vision_channels = tuple(self.down_dims), tuple(self.vision_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


class DiffusionPolicy(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = c = config
        self.state_normalizer = MinMaxNormalizer(c.state_dim)
        self.action_normalizer = MinMaxNormalizer(c.action_dim)
        per_step = c.state_dim
        self.encoder = None
        if c.obs_type == "image":
            self.encoder = ImageEncoder(3, c.vision_channels, c.vision_keypoints, c.vision_dim, c.n_groups,
                                        out_norm=c.vision_norm)
            per_step += c.vision_dim
        self.unet = ConditionalUnet1D(c.action_dim, per_step * c.n_obs_steps, c.down_dims, c.kernel_size, c.n_groups,
                                      c.step_embed_dim)
        self.schedule = DiscreteSchedule(name=c.beta_schedule, num_train_timesteps=c.num_train_timesteps)

    def fit_normalizers(self, states: np.ndarray | torch.Tensor, actions: np.ndarray | torch.Tensor) -> None:
        """Fit the min-max normalizers to demonstrations: low-dim observation features (..., state_dim) and actions
        (..., action_dim), all episodes, as Diffusion Policy fits its normalizer on the whole dataset."""
        self.state_normalizer.load_state_dict(MinMaxNormalizer.fit(states).state_dict())
        self.action_normalizer.load_state_dict(MinMaxNormalizer.fit(actions).state_dict())

    # --- observations -------------------------------------------------------------------------------------------
    def normalize_obs(self, obs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw observations -> network inputs: low-dim features normalized, images left as uint8."""
        key = "state" if self.config.obs_type == "state" else "agent_pos"
        out = {"state": self.state_normalizer.normalize(obs[key].float())}
        if self.encoder is not None:
            out["image"] = obs["image"]
        return out

    def checked_obs(self, obs: dict) -> dict[str, torch.Tensor]:
        """The raw observations `predict_plan` takes, as tensors: (B, n_obs_steps, state_dim) features under "state"
        (an image policy: the agent position under "agent_pos") and (B, n_obs_steps, 3, image_size, image_size) uint8
        frames under "image", as `runner.obs_to_features` makes them from gym-pusht's. Anything else is a ValueError:
        a float frame in 0..1 or another frame size ran silently and failed the task."""
        c = self.config
        key = "state" if c.obs_type == "state" else "agent_pos"
        expected = {key: (c.state_dim,), **({"image": (3, c.image_size, c.image_size)} if self.encoder else {})}
        out = {}
        for k, per_step in expected.items():
            if k not in obs:
                raise ValueError(f"a {c.obs_type} policy's observations hold {sorted(expected)}, got {sorted(obs)}")
            v = torch.as_tensor(obs[k])
            if tuple(v.shape[1:]) != (c.n_obs_steps, *per_step):
                last = " (channels last: permute to (..., 3, H, W))" if k == "image" and v.shape[-1:] == (3,) else ""
                raise ValueError(f"observation {k!r} must be (B, {', '.join(map(str, (c.n_obs_steps, *per_step)))}), "
                                 f"got {tuple(v.shape)}{last}")
            if k == "image" and v.dtype != torch.uint8:
                raise ValueError(f"observation 'image' must be uint8 pixels 0..255, as gym-pusht renders them; got "
                                 f"{v.dtype}")
            out[k] = v
        return out

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) uint8 -> (N, 3, crop, crop): random crop per image in training, centre crop in eval."""
        size, full = self.config.crop_size, image.shape[-1]
        if size >= full:
            return image
        if not self.training:
            o = (full - size) // 2
            return image[..., o:o + size, o:o + size]
        n = image.shape[0]
        oy, ox = (torch.randint(0, full - size + 1, (2, n, 1), device=image.device))
        rows = oy + torch.arange(size, device=image.device)  # (N, size)
        cols = ox + torch.arange(size, device=image.device)
        batch = torch.arange(n, device=image.device)[:, None, None]
        return image[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (N, size, size, 3) -> CHW

    def encode_obs(self, nobs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalized observations (B, n_obs, ...) -> global condition (B, n_obs * per-step features)."""
        feats = nobs["state"]
        if self.encoder is not None:
            b, n = nobs["image"].shape[:2]
            img = pixels_to_unit(self.crop(nobs["image"].flatten(0, 1)))
            encoder = self._frozen("_frozen_encoder", self.encoder, img.device)
            feats = torch.cat([encoder(img).reshape(b, n, -1).to(feats.dtype), feats], -1)
        return feats.flatten(1)

    # --- training -----------------------------------------------------------------------------------------------
    def loss(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """DDPM loss on normalized data: nobs (B, n_obs, ...), naction (B, horizon, action_dim)."""
        cond = self.encode_obs(nobs)
        return ddpm_loss(self.unet, naction, self.schedule, prediction_type=self.config.prediction_type,
                         generator=generator, global_cond=cond)

    def forward(self, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
                teacher: DiffusionPolicy | None = None) -> torch.Tensor:
        """The training loss (so that DDP, which averages the gradients of `forward`, can wrap the policy): `loss`,
        or with a `teacher` `distillation_loss` at this policy's `num_inference_steps`."""
        if teacher is None:
            return self.loss(nobs, naction)
        return self.distillation_loss(teacher, nobs, naction, self.config.num_inference_steps)

    def distillation_grid(self, teacher: PolicyConfig, steps: int) -> list[int]:
        """The teacher's 2 x `steps` DDIM grid, which must hold the student's `steps`-step grid at its even points."""
        if teacher.sampler not in DDIM_SPACING:
            raise ValueError(f"distillation needs a DDIM teacher, not {teacher.sampler!r}")
        if teacher.ddim_eta > 1:
            raise ValueError(f"distillation learns DDIM steps with eta in [0, 1]; the teacher samples with eta "
                             f"{teacher.ddim_eta:g} (re-noising): distil from a copy whose ddim_eta is 1")
        grid = self.schedule.timesteps(2 * steps, DDIM_SPACING[teacher.sampler])
        if grid[::2] != self.schedule.timesteps(steps, DDIM_SPACING[teacher.sampler]):
            raise ValueError(f"the {2 * steps}-step {teacher.sampler} grid does not contain the {steps}-step one")
        return grid

    def distillation_loss(self, teacher: DiffusionPolicy, nobs: dict[str, torch.Tensor], naction: torch.Tensor,
                          steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Progressive distillation (the core's `ddim_distillation_loss`): this policy's DDIM sampler with `steps`
        steps learns the `teacher`'s with 2 x `steps` (its sampler's spacing and eta), on normalized data."""
        c, grid = teacher.config, self.distillation_grid(teacher.config, steps)
        with torch.no_grad():
            teacher_cond = teacher.encode_obs(nobs)
        return ddim_distillation_loss(self.unet, teacher.unet, naction, self.schedule, grid, c.prediction_type,
                                      c.ddim_eta, c.clip_sample, generator, teacher_cond={"global_cond": teacher_cond},
                                      global_cond=self.encode_obs(nobs))

    # --- inference ----------------------------------------------------------------------------------------------
    def freeze_for_cpu(self, unet: nn.Module | None = None) -> DiffusionPolicy:
        """Trace and freeze a copy of the U-Net for CPU inference, its convolutions as matmuls (`MatmulConv1d`, with
        int8 weights if `config.cpu_weights == "int8"`) and its FiLM timestep terms tabulated (`TimestepFiLMTable`;
        the policy's samplers use integer timesteps), and of the image encoder as it is; the modules and the state_dict
        are unchanged. Call again after changing the weights or `cpu_weights`. `unet`: trace this inference copy
        instead (same call signature)."""
        import warnings

        c = self.config
        if unet is None:
            unet = TimestepFiLMTable(with_matmul_convs(self.unet.eval(), int8_weights=c.cpu_weights == "int8"),
                                     c.num_train_timesteps)
        cond_dim = (c.state_dim + (c.vision_dim if self.encoder is not None else 0)) * c.n_obs_steps
        example = (torch.zeros(1, c.horizon, c.action_dim), torch.zeros(1, dtype=torch.long), torch.zeros(1, cond_dim))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation notices
            unet.eval()(*example)  # fills the convolutions' window caches (`MatmulConv1d.windows`) outside the trace
            traced = torch.jit.trace(unet, example)
            self.__dict__["_frozen_unet"] = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            if self.encoder is not None:  # frozen as is: optimize_for_inference gains nothing here and moves floats
                size = min(c.crop_size, c.image_size)
                frames = torch.zeros(c.n_obs_steps, 3, size, size)
                self.__dict__["_frozen_encoder"] = torch.jit.freeze(torch.jit.trace(self.encoder.eval(), frames))
        return self

    def _denoiser(self, device: torch.device):
        return self._frozen("_frozen_unet", self.unet, device)

    def _frozen(self, name: str, module: nn.Module, device: torch.device):
        """`freeze_for_cpu`'s frozen copy `name` of `module` where it applies (CPU, eval mode), else the module."""
        frozen = self.__dict__.get(name)
        return frozen if frozen is not None and device.type == "cpu" and not self.training else module

    def denoising_steps(self, sampler: str | None = None, steps: int | None = None) -> int:
        """Network calls per chunk that `sample(..., sampler, steps)` makes (DDPM runs the whole training chain)."""
        c = self.config
        return c.num_train_timesteps if (sampler or c.sampler) == "ddpm" else steps or c.num_inference_steps

    def warm_start_step(self, sampler: str | None = None, steps: int | None = None) -> int:
        """Index of the DDIM grid step that warm-started chunks begin at (0 = from noise: no warm start)."""
        c = self.config
        sampler, steps = sampler or c.sampler, steps or c.num_inference_steps
        if not c.warm_start_t or sampler not in DDIM_SPACING:
            return 0
        grid = self.schedule.timesteps(steps, DDIM_SPACING[sampler])
        return next((i for i, t in enumerate(grid) if t <= c.warm_start_t), 0)

    def chunk_network_calls(self, sampler: str | None = None, steps: int | None = None) -> int:
        """Network calls of a chunk in the steady state (warm-started chunks skip the grid's first steps)."""
        return self.denoising_steps(sampler, steps) - self.warm_start_step(sampler, steps)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, generator: Generators = None, sampler: str | None = None,
               steps: int | None = None, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Global condition (B, C) -> normalized trajectories (B, horizon, action_dim). `previous`: the last chunk's
        trajectories (B, horizon, action_dim), the start of a warm-started chunk (`config.warm_start_t`)."""
        c = self.config
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1 (None: the config's {c.num_inference_steps}), got {steps}")
        sampler, steps = sampler or c.sampler, steps or c.num_inference_steps
        x_T = randn((cond.shape[0], c.horizon, c.action_dim), generator, cond.device, cond.dtype)
        common = dict(prediction_type=c.prediction_type, clip_sample=c.clip_sample, global_cond=cond)
        unet = self._denoiser(cond.device)
        if sampler in DDIM_SPACING:
            spacing = DDIM_SPACING[sampler]
            first = self.warm_start_step(sampler, steps) if previous is not None else 0
            if first:
                k = c.n_action_steps
                guess = torch.cat([previous[:, k:], previous[:, -1:].expand(-1, k, -1)], dim=1).to(x_T)
                t = torch.full((x_T.shape[0],), self.schedule.timesteps(steps, spacing)[first], device=x_T.device)
                x_T = self.schedule.add_noise(guess, x_T, t).to(x_T.dtype)
            return sample_ddim(unet, x_T, self.schedule, steps=steps, eta=c.ddim_eta, generator=generator,
                               timestep_spacing=spacing, first_step=first, **common)
        if sampler == "dpmpp_2m":
            return sample_dpmpp_2m(unet, x_T, self.schedule, steps=steps, eta=noise_scale_for(c.ddim_eta, sampler),
                                   generator=generator, **common)
        if sampler == "ddpm":
            return sample_ddpm(unet, x_T, self.schedule, generator=generator, **common)
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")

    @torch.no_grad()
    def predict_plan(self, obs: dict[str, torch.Tensor], generator: Generators = None,
                     sampler: str | None = None, steps: int | None = None,
                     previous: torch.Tensor | None = None) -> torch.Tensor:
        """Raw observations (B, n_obs, ...) -> normalized trajectories (B, horizon, action_dim); `previous`: the
        last call's, for warm starts (`config.warm_start_t`)."""
        cond = self.encode_obs(self.normalize_obs(self.checked_obs(obs)))
        return self.sample(cond, generator, sampler, steps, previous)

    def plan_actions(self, plan: torch.Tensor) -> torch.Tensor:
        """Normalized trajectories -> the n_action_steps raw actions from step t on (B, n_action_steps, action_dim)."""
        start = self.config.n_obs_steps - 1
        return self.action_normalizer.unnormalize(plan[:, start:start + self.config.n_action_steps].float())

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor], generator: Generators = None,
                       sampler: str | None = None, steps: int | None = None) -> torch.Tensor:
        """Raw observations (B, n_obs, ...) -> the next n_action_steps raw actions (B, n_action_steps, action_dim),
        each chunk from noise (`TorchPolicyActor` keeps the previous plans for warm starts)."""
        return self.plan_actions(self.predict_plan(obs, generator, sampler, steps))
