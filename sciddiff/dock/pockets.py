"""Geometric pocket detection for blind docking (LIGSITE-style buriedness on a grid).

Grid points (1 A) that are free (no receptor heavy atom within 3 A) but near the protein (one within 6 A) are
scored by buriedness: how many of 14 directions (axes and body diagonals) hit protein within 10 A along a
ray. Points buried in at least `min_buried` directions are clustered (26-connectivity); clusters are ranked by
total buriedness. Returns boxes in Angstrom (centre and full edge lengths).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from sciddiff.dock.io import Box, Receptor

DIRECTIONS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]] + [[a, b, 1] for a in (-1, 1) for b in (-1, 1)], float)
DIRECTIONS = np.concatenate([DIRECTIONS, -DIRECTIONS])  # 14 rays


def find_pockets(rec: Receptor, n: int = 3, ligand_extent: float = 10.0, min_buried: int = 10,
                 spacing: float = 1.0) -> list[Box]:
    xyz = rec.coords
    lo, hi = xyz.min(0) - 2, xyz.max(0) + 2
    shape = np.ceil((hi - lo) / spacing).astype(int) + 1
    tree = cKDTree(xyz)
    grid = np.stack(np.meshgrid(*[lo[k] + spacing * np.arange(shape[k]) for k in range(3)], indexing="ij"), -1).reshape(-1, 3)
    dist, _ = tree.query(grid, distance_upper_bound=6.0)
    occupied = (dist < 2.0).reshape(tuple(shape))  # rays stop here
    candidate = np.where((dist >= 3.0) & np.isfinite(dist))[0]
    if len(candidate) == 0:
        return []
    idx = np.stack(np.unravel_index(candidate, tuple(shape)), 1)
    buried = np.zeros(len(candidate), int)
    for d in DIRECTIONS:
        step = d / np.abs(d).max()
        hit = np.zeros(len(candidate), bool)
        for s in range(1, int(10 / spacing) + 1):
            p = np.rint(idx + step * s).astype(int)
            inside = np.all((p >= 0) & (p < shape), 1)
            q = np.clip(p, 0, shape - 1)
            hit |= inside & occupied[q[:, 0], q[:, 1], q[:, 2]]
        buried += hit
    keep = buried >= min_buried
    mask = np.zeros(tuple(shape), bool)
    mask.reshape(-1)[candidate[keep]] = True
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return []
    flat = labels.reshape(-1)[candidate[keep]]
    weight = np.bincount(flat, weights=buried[keep], minlength=count + 1)
    order = np.argsort(-weight[1:])[:n] + 1
    boxes = []
    for lab in order:
        pts = grid[candidate[keep][flat == lab]]
        if len(pts) < 8:
            continue
        size = np.clip(pts.max(0) - pts.min(0) + 4.0, ligand_extent + 4.0, 28.0)
        boxes.append(Box(center=pts.mean(0).astype(np.float32), size=size.astype(np.float32)))
    return boxes
