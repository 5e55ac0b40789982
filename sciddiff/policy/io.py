"""Policy checkpoint files: EMA weights + config + normalizers in one small `torch.save` dict, plus a JSON sidecar.

`save_policy` stores network weights (U-Net, image encoder) in fp16 by default, halving the file; normalizer bounds and
the float64 noise schedule stay exact. Loading casts back to float32. The sidecar `<name>.json` repeats the config and
the training metadata (command line, steps, data) in a human-readable form. Files are written atomically.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sciddiff.policy.policy import DiffusionPolicy, PolicyConfig
from sciddiff.train.checkpoint import load_checkpoint, save_checkpoint, write_json

FORMAT = "sciddiff.policy/1"
NETWORK_PREFIXES = ("unet.", "encoder.")


def policy_state_dict(policy: DiffusionPolicy, half: bool = True) -> dict[str, torch.Tensor]:
    state = {}
    for k, v in policy.state_dict().items():
        v = v.detach().cpu()
        if half and k.startswith(NETWORK_PREFIXES) and v.dtype == torch.float32:
            v = v.half()
        state[k] = v.clone()
    return state


def save_policy(path: str | Path, policy: DiffusionPolicy, meta: dict | None = None, half: bool = True) -> Path:
    """Write `path` (torch) and `path.with_suffix('.json')` (config + meta)."""
    path = Path(path)
    payload = {"format": FORMAT, "config": policy.config.to_dict(), "state_dict": policy_state_dict(policy, half),
               "meta": meta or {}}
    save_checkpoint(path, payload)
    write_json(path.with_suffix(".json"), {"format": FORMAT, "config": payload["config"], "meta": payload["meta"]})
    return path


def load_policy(path: str | Path, map_location: str | torch.device = "cpu") -> DiffusionPolicy:
    """Rebuild the policy from a file written by `save_policy` (eval mode, float32)."""
    payload = load_checkpoint(path, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sciddiff policy checkpoint (format {FORMAT})")
    policy = DiffusionPolicy(PolicyConfig.from_dict(payload["config"]))
    policy.load_state_dict({k: v.float() if v.dtype == torch.float16 else v for k, v in payload["state_dict"].items()})
    policy.meta = payload.get("meta", {})
    return policy.to(map_location).eval()
