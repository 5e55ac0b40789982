"""Docking settings: the search budget and the choices `sciddiff dock` and `dock-eval` expose (no heavy imports, so
that the command line can show its defaults without loading torch or e3nn)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

SAMPLERS = ("euler_ancestral", "reverse_sde")  # sciddiff.dock.sampler.sample_poses


@dataclass
class DockSettings:
    samples: int = 8          # reverse-diffusion samples, each a search start (needs a model)
    random_starts: int = 80   # further starts: uniformly random poses in the box
    steps: int = 10           # reverse-diffusion steps
    sampler: str = "euler_ancestral"  # reverse diffusion: Euler ancestral or DiffDock's reverse SDE (SAMPLERS)
    poses: int = 10           # ranked poses returned
    opt_steps: int = 60       # gradient steps on every start
    mc_chains: int = 96       # the best this many local minima continue as Monte Carlo chains
    mc_rounds: int = 40       # basin-hopping rounds per chain
    mc_steps: int = 20        # gradient steps per round
    conformers: int = 4       # ETKDG conformers embedded; the distinct shapes among them are searched together
    pockets: int = 6          # blind docking: ligand-sized pockets searched, each with the full search
    refine_sites: int = 2     # blind docking: then the full search again around the best pose of this many pockets
    # blind docking: diffusion samples per geometric pocket (None: `samples`); the refined sites get `samples`. The
    # network helps where a box sits around a ligand-like pose, not in geometric pockets (docs/dock.md)
    pocket_samples: int | None = 0
    scoring: str = "vina"     # scoring function: vina or vinardo (sciddiff.dock.scoring.FUNCTIONS)
    ranking: str = "learned"  # with a rescorer: order poses by its "learned" score or by "energy"
    seed: int = 0

    def __post_init__(self):  # a library caller hears of a bad choice before any work, as the command line does
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")


# entries added after runs were recorded without them, with the value those runs had: a --resume reads an earlier
# run's missing entry as this, so that it keeps what it docked the same way
BEFORE_RECORDED = {"sampler": "reverse_sde", "pocket_samples": None}


def settings_dict(s: DockSettings) -> dict:
    return asdict(s)


def as_recorded_now(record: dict) -> dict:
    """An earlier run's record (summary.json, run.json), its settings' entries recorded since then filled in as that
    run had them."""
    if isinstance(record.get("settings"), dict):
        record["settings"] = {**BEFORE_RECORDED, **record["settings"]}
    return record
