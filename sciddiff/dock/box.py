"""Search boxes: gnina's `--autobox_ligand` (a reference ligand's bounding box + `AUTOBOX_ADD` A per side), an
explicit `--center/--size`, and the checks on them. Coordinates and sizes in Angstrom; `size` is the full edge.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sciddiff.cli import UserError
from sciddiff.dock.ligand_io import reference_coords

if TYPE_CHECKING:
    from sciddiff.dock.receptor import Receptor


AUTOBOX_ADD = 4.0  # A around a ligand on every side: gnina's --autobox_add default
MAX_BOX_SIDE = 60.0  # A: a search box beyond this is a blind search; blind docking finds pockets instead


@dataclass(frozen=True)
class Box:
    center: np.ndarray  # (3,)
    size: np.ndarray    # (3,) full edge lengths

    def contains(self, xyz: np.ndarray, pad: float = 0.0) -> np.ndarray:
        return np.all(np.abs(xyz - self.center) <= self.size / 2 + pad, axis=-1)


def box_around(xyz: np.ndarray, add: float = AUTOBOX_ADD) -> Box:
    """The bounding box of the points xyz (N, 3) grown by `add` Angstrom on every side."""
    lo, hi = xyz.min(0), xyz.max(0)
    return Box(center=((lo + hi) / 2).astype(np.float32), size=(hi - lo + 2 * add).astype(np.float32))


def box_from_ligand(path: str | os.PathLike, add: float = AUTOBOX_ADD) -> Box:
    """gnina's --autobox_ligand: the reference's bounding box grown by `add` Angstrom on every side."""
    return box_around(reference_coords(path), add)


def resolve_box(receptor: Receptor, autobox_ligand: str | None = None, autobox_add: float | None = None,
                center: list[float] | None = None, size: list[float] | None = None) -> Box | None:
    """Turn the box options into a Box (None = blind docking), rejecting contradictions."""
    if autobox_ligand and (center is not None or size is not None):
        raise UserError("give either --autobox-ligand or --center/--size, not both")
    if autobox_add is not None and not autobox_ligand:
        raise UserError("--autobox-add needs --autobox-ligand")
    if (center is None) != (size is None):
        raise UserError("--center and --size go together")
    if autobox_ligand:
        box = box_from_ligand(autobox_ligand, checked_autobox_add(AUTOBOX_ADD if autobox_add is None else autobox_add))
    elif center is not None:
        size_arr = np.asarray(size, dtype=np.float32)
        if np.any(~np.isfinite(size_arr)) or np.any(size_arr <= 0):
            raise UserError("--size values must be finite and positive (A)")
        if not np.all(np.isfinite(center)):
            raise UserError("--center values must be finite numbers")
        box = Box(center=np.asarray(center, dtype=np.float32), size=size_arr)
    else:
        return None
    centre, size_a = (np.round(v.astype(float), 2).tolist() for v in (box.center, box.size))  # no float32 digits
    if not np.any(box.contains(receptor.coords, pad=4.0)):
        raise UserError(f"the box (centre {centre}, size {size_a}) "
                        "contains no protein atoms (within 4 A): wrong coordinates or wrong protein?")
    return checked_box_size(box)


def checked_autobox_add(add: float) -> float:
    """--autobox-add, refused (one line) unless finite, >= 0 and small enough for a box within MAX_BOX_SIDE."""
    add = float(add)
    if not (np.isfinite(add) and 0 <= add <= MAX_BOX_SIDE / 2):
        raise UserError(f"--autobox-add must be a number of Angstrom from 0 to {MAX_BOX_SIDE / 2:g}, got {add:g}")
    return add


def checked_box_size(box: Box) -> Box:
    if np.any(box.size > MAX_BOX_SIDE):
        raise UserError(f"box size {np.round(box.size.astype(float), 2).tolist()} exceeds {MAX_BOX_SIDE:g} A per "
                        "side; leave the box out for blind docking")
    return box
