"""Secondary-structure labels for conditioning the backbone model: DSSP labels of training chains, user strings, and a
prior over whole-chain label strings drawn from natural chains.

Labels are DSSP's 3 states as integers, `SS_CODES` = "LHE": 0 loop, 1 helix (H), 2 strand (E); `SS_UNKNOWN` (3) means
"not given" (the unconditional model). Training labels come from pydssp on the ideal backbone rebuilt from each chain's
frames, which is exactly how `sciddiff backbone eval` scores generated samples, so "asked for a strand" and "measured a
strand" use one definition.

The default prior (`draw_ss_labels`) picks a natural training chain of similar length and stretches its label string to the
requested length, the way RFdiffusion users hand a scaffold's secondary structure to the model: element order, lengths and
composition are natural; where the elements go in space (which strands pair) is left to the model.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SS_CODES = "LHE"
SS_UNKNOWN = 3
_ALIASES = {"L": 0, "-": 0, "C": 0, "H": 1, "E": 2}


def secondary_structure_labels(coords: Tensor, lengths: Tensor) -> Tensor:
    """DSSP labels (0/1/2) per residue of concatenated N/CA/C chains (total, 3, 3) in Angstrom: the eval metric
    (`metrics.secondary_structure`) on the ideal backbone rebuilt from each chain's frames."""
    from sciddiff.protein.geometry import backbone_from_frames, frames_from_backbone
    from sciddiff.protein.metrics import secondary_structure

    labels = []
    for xyz in torch.split(coords.double(), lengths.tolist()):
        rot, ca = frames_from_backbone(xyz[:, 0], xyz[:, 1], xyz[:, 2])
        states = secondary_structure(backbone_from_frames(rot, ca).float().numpy())
        labels.append(torch.tensor([_ALIASES[c] for c in states], dtype=torch.long))
    return torch.cat(labels)


def labels_to_string(labels: Tensor) -> str:
    return "".join(SS_CODES[int(i)] if int(i) < SS_UNKNOWN else "?" for i in labels)


def parse_ss(text: str, length: int) -> Tensor:
    """A per-residue string of H (helix), E (strand) and L / - / C (loop) -> labels (length,); ValueError if malformed."""
    text = text.strip().upper()
    if len(text) != length:
        raise ValueError(f"secondary-structure string has {len(text)} characters for {length} residues")
    bad = sorted(set(text) - set(_ALIASES))
    if bad:
        raise ValueError(f"secondary-structure string may only hold H, E, L, - or C (found {''.join(bad)!r})")
    return torch.tensor([_ALIASES[c] for c in text], dtype=torch.long)


def draw_ss_labels(library: list[str], length: int, rng: np.random.Generator, window: float = 0.2) -> Tensor:
    """Labels (length,) of a random library string whose length is within +/- `window` of `length` (else of the 16
    closest), stretched or squeezed to `length` by nearest-index resampling."""
    sizes = np.array([len(s) for s in library])
    near = np.flatnonzero(np.abs(sizes - length) <= window * length)
    if len(near) == 0:
        near = np.argsort(np.abs(sizes - length), kind="stable")[:16]
    source = library[int(rng.choice(near))]
    index = np.minimum((np.arange(length) * len(source)) // length, len(source) - 1)
    return torch.tensor([SS_CODES.index(source[i]) for i in index], dtype=torch.long)


def chain_labels(spec: str, length: int | list[int], seeds: list, library: list[str] | None) -> list[Tensor] | None:
    """Per-chain labels for `sciddiff backbone sample --ss SPEC` (`length`: one for all chains or one per chain):
    "none" -> None (unconditional); "natural" -> drawn from `library` with a generator seeded by (*seed, 1) per chain,
    so chain i's labels depend on its seed only; otherwise SPEC is one H/E/L string used for every chain."""
    lengths = [length] * len(seeds) if isinstance(length, int) else list(length)
    if spec == "none":
        return None
    if spec == "natural":
        if not library:
            raise ValueError("this checkpoint has no secondary-structure library for --ss natural")
        return [draw_ss_labels(library, n, np.random.default_rng([*np.atleast_1d(s).tolist(), 1]))
                for n, s in zip(lengths, seeds)]
    if len(set(lengths)) > 1:
        raise ValueError("one secondary-structure string fits one length; give a single --length")
    labels = parse_ss(spec, lengths[0])
    return [labels] * len(seeds)
