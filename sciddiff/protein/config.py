"""Configurations of the backbone model and its flow, and the training options, without importing torch (so that
`sciddiff backbone ...` can check its arguments before the heavy imports).

Units: model translations are Angstrom / `DenoiserConfig.scale`; time t runs from 0 (noise) to 1 (data).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass


@dataclass
class DenoiserConfig:
    dim: int = 128  # residue feature width
    edge_dim: int = 48  # edge feature width
    heads: int = 4
    points: int = 4  # value points per head
    blocks: int = 4
    k: int = 12  # spatial neighbours in the noisy structure
    k_sc: int = 6  # spatial neighbours in the self-conditioning guess
    seq_window: int = 2  # sequence neighbours on each side
    max_offset: int = 32  # sequence offsets are clipped to +/- this
    rbf: int = 16  # radial basis functions for distances
    rbf_max: float = 2.0  # model units (20 A at scale 10)
    scale: float = 10.0  # Angstrom per model unit
    ss_condition: bool = False  # per-residue secondary-structure labels as an (invariant) node input

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FlowConfig:
    steps: int = 50  # Euler steps at sampling
    rot_rate: float = 20.0  # exponential rotation schedule at sampling (FrameFlow: 10; 20 measured better here)
    noise_scale: float = 1.0  # sampling temperature: the translation prior's std (below 1: more helix, more compact)
    # Low-temperature stochastic sampling (core.flow's Langevin term on translations; eta 0 = the plain ODE): measured
    # more helix and strand at equal Ramachandran quality on tuning seeds (docs/protein.md)
    langevin_eta: float = 1.0
    langevin_temperature: float = 0.1  # 1 keeps the model's distribution, < 1 sharpens it toward its modes
    # Compactness guidance (an RFdiffusion-style radius-of-gyration potential): while t < compactness_until, a predicted
    # chain whose CA radius of gyration exceeds the natural fit 1.59 N^0.465 A is scaled about its centroid by
    # (fit / Rg)^compactness, and one of at least compactness_floor_min_length residues whose Rg is below
    # compactness_floor x fit by (floor x fit / Rg)^compactness; compactness 0 turns both off, floor 0 the second.
    # The model alone builds short chains too extended and long ones too compact (docs/protein.md).
    compactness: float = 1.0
    compactness_until: float = 0.9
    compactness_floor: float = 0.9
    compactness_floor_min_length: int = 150
    train_rot_sigma: float = 1.5  # IGSO(3) noise for rotations during training
    min_t: float = 0.01
    t_clip: float = 0.9  # 1 - t is floored at 1 - t_clip in the loss weight
    trans_weight: float = 2.0
    rot_weight: float = 1.0
    aux_weight: float = 0.5
    aux_t: float = 0.75  # auxiliary losses only where t > aux_t
    aux_pair_radius: float = 1.0  # residues whose CAs are this close are compared (model units, 10 A)
    aux_atom_cutoff: float = 0.6  # ...on their atom pairs closer than this in the clean chain (6 A)
    self_condition: float = 0.5  # probability of a self-conditioned training step
    ss_drop: float = 0.25  # fraction of chains trained without their secondary-structure labels (ss_condition models)

    def to_dict(self) -> dict:
        return asdict(self)


class _ModelOption(argparse.Action):
    """Stores the value and records the option in `namespace.model_options_given`: a resumed run refuses model (and
    training, `RUN_OPTIONS`) options that differ from its own, and one given with its default value counts as given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.model_options_given = getattr(namespace, "model_options_given", set()) | {self.dest}


class _ModelFlag(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.model_options_given = getattr(namespace, "model_options_given", set()) | {self.dest}


# training options a resumed run keeps (stored in state.pt): given again with another value they are refused, left
# out they are the run's own, not this call's defaults
RUN_OPTIONS = ("batch_residues", "length_balance", "lr", "warmup", "ema", "ema_power", "self_condition", "aux_weight",
               "ss_drop")


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `sciddiff backbone train` / `python -m sciddiff.protein.train`."""
    p.add_argument("--chains", required=True, help="tensor file from `sciddiff backbone prepare` (chains.pt)")
    p.add_argument("--out", required=True, help="run folder (state.pt, model.pt, log.csv); resumed if it has state.pt")
    p.add_argument("--max-seconds", type=float, default=600.0, help="wall-clock budget of this call")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this total step count")
    p.add_argument("--batch-residues", action=_ModelOption, type=int, default=4096,
                   help="residues per batch (whole chains)")
    p.add_argument("--length-balance", action=_ModelOption, type=float, default=0.0,
                   help="draw chains with probability ~ length^-x: 0 uniform (long chains dominate the per-residue "
                        "loss), 1 equal expected weight per chain")
    p.add_argument("--lr", action=_ModelOption, type=float, default=5e-4)
    p.add_argument("--warmup", action=_ModelOption, type=int, default=200,
                   help="linear learning-rate warm-up steps (0: none)")
    p.add_argument("--ema", action=_ModelOption, type=float, default=0.999,
                   help="EMA decay (the ceiling when --ema-power is set)")
    p.add_argument("--ema-power", action=_ModelOption, type=float, default=0.75,
                   help="EMA warm-up power (decay 1 - (1 + step)^-power, capped at --ema); 0 = fixed decay")
    p.add_argument("--ckpt-seconds", type=float, default=120.0, help="checkpoint interval")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device (cuda when available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    for name, value in DenoiserConfig().to_dict().items():
        if isinstance(value, bool):
            p.add_argument(f"--{name.replace('_', '-')}", action=_ModelFlag, default=value, help="model: " + name)
        else:
            p.add_argument(f"--{name.replace('_', '-')}", action=_ModelOption, type=type(value), default=value,
                           help="model: " + name)
    p.add_argument("--self-condition", action=_ModelOption, type=float, default=FlowConfig.self_condition,
                   help="self-conditioning prob.")
    p.add_argument("--aux-weight", action=_ModelOption, type=float, default=FlowConfig.aux_weight,
                   help="weight of the auxiliary atom losses")
    p.add_argument("--ss-drop", action=_ModelOption, type=float, default=FlowConfig.ss_drop,
                   help="with --ss-condition: fraction of chains trained without their secondary-structure labels")
    p.add_argument("--init", default=None, help="start a new run from the EMA weights of this model file (model.pt)")
