"""FrameFlow-style flow matching on residue frames, R^3 x SO(3) per residue, with `sciddiff.core.flow`.

Layout: the residues of all chains in a batch are concatenated (PyG style); a point of the core's space
`Product(trans=Euclidean(3), rot=SO3())` is one residue, so the core's per-sample time t is per residue (every residue of a
chain shares its chain's t). Time runs from 0 (noise) to 1 (data). Translations are CA positions in model units
(Angstrom / 10), centred per chain.

- Noise: translations N(0, I) (10 A per axis) centred per chain; rotations Haar-uniform at sampling and IGSO(3) at sigma 1.5
  during training (FrameFlow's choice: the uniform prior's far-from-data rotations carry little signal).
- Loss: the core's flow-matching loss (velocity error, 1 - t floored at 0.1) weighted 2 : 1 for translations : rotations,
  plus FrameDiff's auxiliary losses where t > 0.75 (close to data): N/CA/C atom positions from the predicted frames, and
  distances between the N/CA/C atoms of different residues closer than 6 A in the clean chain (peptide bonds, CA(i)-CA(i+1),
  contacts; summed per residue). Like the velocity loss they are divided by (1 - t)^2 (FrameFlow), which makes them comparable in size to it;
  without that factor they were ~1e-3 of the total and the samples' CA spacing and peptide bonds drifted. Self-conditioning: with probability 1/2 the model first predicts
  without it (no gradient) and is then given that guess. Secondary-structure conditioning (models built with
  `ss_condition`): the chain's DSSP labels are given, except for a fraction `ss_drop` of chains that get "not given", so one
  model samples both with and without a target secondary structure.
- Sampling: the core's Euler sampler on geodesics with an exponential rotation schedule of rate 20 (FrameFlow uses 10;
  20 gave more secondary structure and better Ramachandran on tuning seeds) and the translation prior scaled by
  `noise_scale` (a temperature), with the core's Langevin term on translations (`langevin_eta`,
  `langevin_temperature`: low-temperature sampling) and, while t < `compactness_until`, predicted chains more extended
  than the natural radius-of-gyration fit pulled back toward it and long chains (`compactness_floor_min_length`) more
  compact than `compactness_floor` x fit pushed out to that (`guide_to_natural_rg`, an RFdiffusion-style potential),
  feeding each step's clean prediction back as the next step's self-conditioning input; frames are idealized
  (`refine`) and become ideal 4-atom backbones.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from sciddiff.core import so3
from sciddiff.core.flow import flow_matching_loss, sample_flow
from sciddiff.core.spaces import SO3, Euclidean, Product
from sciddiff.nn.graph import radius_graph, segment_mean
from sciddiff.protein.config import FlowConfig
from sciddiff.protein.geometry import backbone_from_frames, frame_atoms
from sciddiff.protein.metrics import RG_EXPONENT, RG_PREFACTOR
from sciddiff.protein.model import FrameDenoiser
from sciddiff.protein.refine import IdealizeConfig, idealize_frames
from sciddiff.protein.ss import SS_UNKNOWN
from sciddiff.train.distributed import unwrap

SPACE = Product(trans=Euclidean(3), rot=SO3())


def center(x: Tensor, batch: Tensor) -> Tensor:
    """Subtract each chain's mean: x (N, 3), batch (N,)."""
    return x - segment_mean(x, batch, int(batch.max()) + 1)[batch]


def guide_to_natural_rg(trans: Tensor, batch: Tensor, strength: float, scale: float, floor: float = 0.0,
                        floor_min_length: int = 0) -> Tensor:
    """Scale each chain about its centroid toward the natural radius-of-gyration fit RG_PREFACTOR N^RG_EXPONENT
    (Angstrom; translations in model units of `scale` Angstrom): by (fit / Rg)^strength where its CA radius of
    gyration Rg exceeds the fit, and, for chains of at least `floor_min_length` residues, by (floor fit / Rg)^strength
    where Rg is below `floor` times the fit; other chains unchanged."""
    length = torch.bincount(batch)
    centre = segment_mean(trans, batch, len(length))
    rel = trans - centre[batch]
    rg = segment_mean(rel.pow(2).sum(-1), batch, len(length)).sqrt().clamp_min(1e-6)
    fit = RG_PREFACTOR * length.to(trans.dtype) ** RG_EXPONENT / scale
    low = torch.where(length >= floor_min_length, floor * fit, torch.zeros_like(fit))
    return centre[batch] + rel * ((rg.clamp(low, fit) / rg) ** strength)[batch, None]


def sample_noise(batch: Tensor, generator: torch.Generator | None = None, rot_sigma: float | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Prior frames for the residues of `batch`: centred N(0, I) translations; rotations uniform or IGSO(3)(rot_sigma)."""
    n, device = batch.shape[0], batch.device
    trans = center(torch.randn(n, 3, generator=generator, device=device, dtype=dtype), batch)
    if rot_sigma is None:
        rot = so3.uniform_so3(n, generator=generator, device=device, dtype=dtype)
    else:
        rot = so3.exp_map(so3.sample_igso3(rot_sigma, n, generator=generator, device=device, dtype=dtype))
    return {"trans": trans, "rot": rot}


def training_loss(net: FrameDenoiser, x_data: dict[str, Tensor], batch: Tensor, residue_index: Tensor,
                  cfg: FlowConfig, generator: torch.Generator | None = None, ss: Tensor | None = None,
                  amp: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """One flow-matching training loss on a batch of clean frames (see module doc); returns (loss, parts).

    `amp`: run the network under bf16 autocast. Only the network: noising, interpolation and the losses compose rotations
    and must stay float32 (bf16 matmuls there would feed the network non-orthogonal frames and skew the targets).
    """
    net_cfg = unwrap(net).cfg  # `net` may be DDP-wrapped (`sciddiff.train.distributed.wrap`)
    num_chains = int(batch.max()) + 1
    device = batch.device
    t_chain = cfg.min_t + (1.0 - cfg.min_t) * torch.rand(num_chains, generator=generator, device=device)
    t = t_chain[batch]
    if net_cfg.ss_condition and ss is not None:
        dropped = torch.rand(num_chains, generator=generator, device=device) < cfg.ss_drop
        ss = torch.where(dropped[batch], torch.full_like(ss, SS_UNKNOWN), ss)
    x_noise = sample_noise(batch, generator, cfg.train_rot_sigma, x_data["trans"].dtype)
    use_sc = bool(torch.rand((), generator=generator, device=device) < cfg.self_condition)
    captured: dict[str, dict[str, Tensor]] = {}

    def model(x_t: dict[str, Tensor], t_: Tensor) -> dict[str, Tensor]:
        sc = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if use_sc:
                with torch.no_grad():
                    sc = net(x_t["rot"], x_t["trans"], t_, batch, residue_index, ss=ss)[1]
            rot, trans = net(x_t["rot"], x_t["trans"], t_, batch, residue_index, sc_trans=sc, ss=ss)
        captured["x1"] = {"trans": trans.float(), "rot": rot.float()}
        return captured["x1"]

    _, parts = flow_matching_loss(model, SPACE, x_noise, x_data, t, t_clip=cfg.t_clip)
    pred = captured["x1"]

    # Per-residue weight: only close to data, divided by (1 - t)^2 like the velocity loss.
    late = (t > cfg.aux_t).float() / (1.0 - t.clamp(max=cfg.t_clip)).pow(2)
    n_late = (t > cfg.aux_t).float().sum().clamp_min(1.0)
    scale = net_cfg.scale
    atoms_pred = frame_atoms(pred["rot"], pred["trans"], scale)
    atoms_true = frame_atoms(x_data["rot"], x_data["trans"], scale)
    atom_loss = ((atoms_pred - atoms_true).pow(2).sum(-1).mean(-1) * late).sum() / n_late
    src, dst = radius_graph(x_data["trans"], cfg.aux_pair_radius, batch)
    d_true = (atoms_true[src][:, :, None] - atoms_true[dst][:, None, :]).norm(dim=-1)  # (E, 3, 3) atom pairs
    d_pred = (atoms_pred[src][:, :, None] - atoms_pred[dst][:, None, :]).norm(dim=-1)
    pair_w = (d_true < cfg.aux_atom_cutoff).float() * late[dst][:, None, None]
    pair_loss = ((d_pred - d_true).pow(2) * pair_w).sum() / n_late  # summed per residue: a mean over its ~40
    # contacts would let one bad peptide bond vanish in the average

    loss = (cfg.trans_weight * parts["trans"] + cfg.rot_weight * parts["rot"]
            + cfg.aux_weight * (atom_loss + pair_loss))
    return loss, {"trans": parts["trans"].detach(), "rot": parts["rot"].detach(), "atom": atom_loss.detach(),
                  "pair": pair_loss.detach()}


def _sample_in_threads(net: FrameDenoiser, lengths: list[int], cfg: FlowConfig, steps: int | None, seeds: list,
                       progress: Callable, idealize: bool | IdealizeConfig, ss: list[Tensor] | None, workers: int
                       ) -> list[np.ndarray]:
    """`sample` on `workers` groups of chains (contiguous, about equal residue counts) in threads, one intra-op thread
    each; results in the order of `lengths`."""
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(1, workers) * sum(lengths) / workers, side="right")
    groups = [g.tolist() for g in np.split(np.arange(len(lengths)), bounds) if len(g)]

    def run(k: int, idx: list[int]) -> list[np.ndarray]:
        return sample(net, [lengths[i] for i in idx], cfg, steps, [seeds[i] for i in idx], "cpu",
                      progress if k == 0 else iter, idealize, None if ss is None else [ss[i] for i in idx])

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(len(groups)) as pool:
            parts = list(pool.map(run, range(len(groups)), groups))
    finally:
        torch.set_num_threads(previous)
    return [bb for part in parts for bb in part]


@torch.inference_mode()
def sample(net: FrameDenoiser, lengths: list[int], cfg: FlowConfig, steps: int | None = None,
           seeds: list | None = None, device: torch.device | str = "cpu", progress: Callable = iter,
           idealize: bool | IdealizeConfig = True, ss: list[Tensor] | None = None, workers: int = 1
           ) -> list[np.ndarray]:
    """Generate one backbone per entry of `lengths`; returns float arrays (L, 4, 3) of N, CA, C, O in Angstrom.

    With `idealize` (True: the default `IdealizeConfig`, or a config), the generated frames are finally moved to ideal
    peptide geometry without CA clashes, completing nearly formed backbone H-bonds, by a restrained minimization
    (`sciddiff.protein.refine`); with False, the network's frames are returned as they are.

    `workers` > 1 (CPU): the chains are split into that many groups of about equal residue count, sampled concurrently in
    threads with one intra-op thread each (restored afterwards). The network's many small ops run nearly twice as fast
    on two cores this way as with two intra-op threads over all chains (docs/benchmarks.md); `progress` then follows
    the first group.

    Chain i's noise comes from its own CPU generator seeded by `seeds[i]` (an int or a tuple of ints, mixed by NumPy's
    SeedSequence; default i), so a backbone depends on its seed only, not on which chains share its batch or on the device
    (up to float rounding, which the relax's iterations can grow to ~0.01-0.02 A).
    `ss` (models built with `ss_condition`): per-chain secondary-structure labels (L_i,) to condition on (`sciddiff.protein.ss`).
    """
    seeds = list(range(len(lengths))) if seeds is None else seeds
    if len(seeds) != len(lengths):
        raise ValueError(f"{len(lengths)} lengths but {len(seeds)} seeds")
    if workers > 1 and len(lengths) > 1 and torch.device(device).type == "cpu":
        return _sample_in_threads(net, lengths, cfg, steps, seeds, progress, idealize, ss, workers)
    parts, generators = [], []
    for n, seed in zip(lengths, seeds):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0] >> 1))
        noise = sample_noise(torch.zeros(n, dtype=torch.long), gen)
        parts.append({"trans": noise["trans"] * cfg.noise_scale, "rot": noise["rot"]})
        generators.append(gen)
    x_init = {k: torch.cat([p[k] for p in parts]).to(device) for k in ("trans", "rot")}
    lengths_t = torch.as_tensor(lengths)
    batch = torch.repeat_interleave(torch.arange(len(lengths)), lengths_t)
    residue_index = torch.arange(int(lengths_t.sum())) - (torch.cumsum(lengths_t, 0) - lengths_t)[batch]
    batch, residue_index = batch.to(device), residue_index.to(device)
    if ss is not None:
        if not net.cfg.ss_condition:
            raise ValueError("this model was trained without secondary-structure conditioning")
        if [len(s) for s in ss] != list(lengths):
            raise ValueError("secondary-structure labels do not match the chain lengths")
        ss = torch.cat(list(ss)).to(device)
    state: dict[str, Tensor | None] = {"sc": None}

    def model(x_t: dict[str, Tensor], t: Tensor) -> dict[str, Tensor]:
        rot, trans = net(x_t["rot"], x_t["trans"], t, batch, residue_index, sc_trans=state["sc"], ss=ss)
        if cfg.compactness and float(t[0]) < cfg.compactness_until:
            trans = guide_to_natural_rg(trans, batch, cfg.compactness, net.cfg.scale, cfg.compactness_floor,
                                        cfg.compactness_floor_min_length)
        state["sc"] = trans
        return {"trans": trans, "rot": rot}

    def langevin_noise(x: dict[str, Tensor]) -> dict[str, Tensor]:
        """Centred per chain, drawn from each chain's own generator (so a backbone still depends on its seed only)."""
        z = torch.cat([torch.randn(n, 3, generator=g, dtype=x["trans"].dtype) for n, g in zip(lengths, generators)])
        return {"trans": center(z.to(device), batch)}

    x1 = sample_flow(model, SPACE, x_init, steps=steps or cfg.steps, rates={"rot": cfg.rot_rate},
                     langevin={"trans": cfg.langevin_eta}, temperature=cfg.langevin_temperature, noise=langevin_noise,
                     progress=progress)
    rot, trans, batch = x1["rot"].double().cpu(), x1["trans"].double().cpu() * net.cfg.scale, batch.cpu()
    if idealize:
        rot, trans = idealize_frames(rot, trans, batch, IdealizeConfig() if idealize is True else idealize)
    return [backbone_from_frames(rot[batch == i], trans[batch == i]).numpy() for i in range(len(lengths))]
