"""Diffusion Policy (Chi et al., RSS 2023) on the sciddiff core: visuomotor control by denoising action chunks.

Modules, one concept each:
- `replay_buffer`: episodes in Diffusion Policy's zarr layout (reads the paper's v2 stores, appends with zarr 3).
- `sampler`: training windows with episode-edge padding as index clamping; episode splits.
- `normalizer`: per-dimension min-max to [-1, 1], saved inside the policy.
- `pusht`: the PushT task's geometry and observation features (what gym-pusht shows at evaluation time).
- `data`: training arrays from the zarr or one preprocessed `.npz` (for GPU machines without zarr/gymnasium).
- `policy`: `PolicyConfig`, `DiffusionPolicy` (1D temporal U-Net + optional image encoder, DDPM loss, DDIM /
  DPM-Solver++ / DDPM sampling).
- `io`: small policy files (fp16 EMA weights + config + normalizers) and their JSON sidecar.
- `train`: the training loop (`python -m sciddiff.policy.train`), resumable, bf16 / compile on CUDA.
- `runner`: receding-horizon rollouts in any gymnasium env (`EnvAdapter`; `PushTAdapter` for gym_pusht/PushT-v0).
- `evaluate`: PushT metrics (mean max reward / coverage, success rate, CPU latency per action chunk).
- `cli`: `sciddiff policy prepare|train|eval`.
Importing this package imports nothing heavy; gymnasium and zarr are imported only by the modules that need them.
"""

# the names a script reaches for first, importable from the package and loaded on first use (PEP 562)
_EXPORTS = {"load_policy": "io", "save_policy": "io", "DiffusionPolicy": "policy", "PolicyConfig": "policy",
            "ReplayBuffer": "replay_buffer", "MinMaxNormalizer": "normalizer", "EnvAdapter": "runner",
            "PushTAdapter": "runner", "TorchPolicyActor": "runner", "run_episodes": "runner",
            "evaluate_policy": "evaluate"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
