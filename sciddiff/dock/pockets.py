"""Geometric pocket detection for blind docking (LIGSITE-style buriedness on a grid), pockets sized to the ligand.

Grid points (1 A) that are free (no receptor heavy atom within 3 A) but near the protein (one within 6 A) are
scored by buriedness: how many of 14 directions (axes and body diagonals) hit protein within 10 A along a
ray. Points buried in at least `min_buried` directions are kept. A pocket is a ligand-sized sphere (radius half
the ligand's extent, 4-8 A) around a buried point, scored by the buriedness summed over the buried points inside
it: the buried space a ligand of this size can fill. Pockets are picked greedily by that score, each excluding
the points within 1.5 radii of it, and returned as boxes in Angstrom (centre and full edge lengths).
"""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from sciddiff.cli import UserError
from sciddiff.dock.box import Box
from sciddiff.dock.receptor import Receptor

DIRECTIONS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]] + [[a, b, 1] for a in (-1, 1) for b in (-1, 1)], float)
DIRECTIONS = np.concatenate([DIRECTIONS, -DIRECTIONS])  # 14 rays
POCKET_MARGIN = 4.0   # A added on every side of the ligand's extent, as --autobox-add's default
# pocket centres stay this many radii apart: at 1 radius a large site yields several overlapping boxes (training
# subset: the site within 4 A of a top-5 pocket for 23 of 30 complexes at 1, 24 at 1.5, 23 at 2)
SEPARATION = 1.5
MIN_POINTS = 8        # buried grid points (1 A spacing) a pocket's sphere needs
# ~270 A on each edge at 1 A: a few GB while the grid is scored; larger (or a stray atom far away) is refused
MAX_GRID_POINTS = 20_000_000


def buried_points(rec: Receptor, min_buried: int = 10, spacing: float = 1.0, workers: int = 1
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Free grid points (P, 3) in A near the protein that are buried in at least `min_buried` of the 14 ray
    directions, and their buriedness (P,) (number of directions that hit protein within 10 A). `workers`: threads
    of the nearest-atom query."""
    xyz = rec.coords
    lo, hi = xyz.min(0) - 2, xyz.max(0) + 2
    shape = np.ceil((hi - lo) / spacing).astype(int) + 1
    if np.prod(shape.astype(float)) > MAX_GRID_POINTS:  # the dense grid's memory grows with the protein's volume
        span = " x ".join(f"{v:.0f}" for v in hi - lo - 4)
        raise UserError(f"the protein spans {span} A: too large for the blind pocket search; give a box "
                        "(--autobox-ligand or --center/--size) or keep only the chains around the site")
    tree = cKDTree(xyz)
    grid = np.stack(np.meshgrid(*[lo[k] + spacing * np.arange(shape[k]) for k in range(3)], indexing="ij"), -1).reshape(-1, 3)
    dist, _ = tree.query(grid, distance_upper_bound=6.0, workers=workers)
    occupied = (dist < 2.0).reshape(tuple(shape))  # rays stop here
    candidate = np.where((dist >= 3.0) & np.isfinite(dist))[0]
    # a ray from a point hits protein within 10 A when the occupancy grid, shifted back along the ray by one of
    # its steps (each direction's step is a whole grid offset), is occupied there: one whole-grid OR per step
    # instead of a gather per point (a 21k-atom tetramer: 2.8 -> 1.0 s, the same points)
    buried = np.zeros(len(candidate), int)
    for d in DIRECTIONS.astype(int):
        hit = np.zeros(tuple(shape), bool)
        for s in range(1, int(10 / spacing) + 1):
            src = tuple(slice(max(0, o), n + min(0, o)) for o, n in zip(d * s, shape))  # p + s d inside the grid
            dst = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(d * s, shape))  # from points p
            hit[dst] |= occupied[src]
        buried += hit.reshape(-1)[candidate]
    keep = buried >= min_buried
    return grid[candidate[keep]].astype(np.float32), buried[keep]


def find_pockets(rec: Receptor, n: int = 3, ligand_extent: float = 10.0, min_buried: int = 10,
                 spacing: float = 1.0, workers: int = 1) -> list[Box]:
    """Up to n pockets, best first, as cubic boxes of edge `ligand_extent` + 2 POCKET_MARGIN (A) around the
    buriedness-weighted centre of each pocket's buried points."""
    pts, buried = buried_points(rec, min_buried, spacing, workers)
    if len(pts) == 0:
        return []
    # one ligand-sized sphere per pocket: a whole buried cluster can span a groove or a domain interface much
    # larger than the ligand, and its centre then lies far from any site (training complexes: cluster-wide boxes
    # were 23-28 A for 16 of 20, a top-3 cluster centre lay within 4 A of the site for 14 of 30; spheres: 21)
    radius = float(np.clip(ligand_extent / 2, 4.0, 8.0))
    tree = cKDTree(pts)
    members = tree.query_ball_point(pts, radius)
    weight = buried.astype(float)
    # a sphere with fewer than MIN_POINTS buried points cannot hold a heavy atom's neighbourhood
    score = np.array([weight[m].sum() if len(m) >= MIN_POINTS else -np.inf for m in members])
    alive = np.isfinite(score)
    boxes: list[Box] = []
    while len(boxes) < n and alive.any():
        j = int(np.argmax(np.where(alive, score, -np.inf)))
        m = members[j]
        center = (pts[m] * weight[m, None]).sum(0) / weight[m].sum()
        edge = ligand_extent + 2 * POCKET_MARGIN
        boxes.append(Box(center=center.astype(np.float32), size=np.full(3, edge, np.float32)))
        alive[tree.query_ball_point(pts[j], SEPARATION * radius)] = False
        alive[tree.query_ball_point(center, SEPARATION * radius)] = False
    return boxes
