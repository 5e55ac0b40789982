"""Loading a trained backbone model: `model.pt` written by `sciddiff.protein.train` (EMA weights + configs).

The shipped checkpoint is data/protein/backbone_flow.pt (its config and training command beside it in
data/protein/backbone_flow.json). A checkpoint is loaded with `weights_only=True` (no pickled code).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from sciddiff.protein.config import DenoiserConfig, FlowConfig
from sciddiff.protein.model import FrameDenoiser

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "data" / "protein" / "backbone_flow.pt"


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
               ) -> tuple[FrameDenoiser, FlowConfig, dict]:
    """(network in eval mode with EMA weights, flow config, checkpoint metadata)."""
    path = Path(path or DEFAULT_CHECKPOINT)
    if not path.is_file():
        raise FileNotFoundError(f"no backbone checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "optimizer" in ckpt:
        raise ValueError(f"{path.name} is a training state (to resume a run); give the model.pt written beside it")
    net = FrameDenoiser(DenoiserConfig(**ckpt["model_config"]))
    net.load_state_dict(ckpt["ema"])
    meta = {k: v for k, v in ckpt.items() if k != "ema"}
    return net.to(device).eval(), FlowConfig(**ckpt["flow_config"]), meta
