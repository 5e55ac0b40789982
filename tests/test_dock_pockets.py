"""Blind docking's pocket finder on the example complexes and on a synthetic tunnel."""
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from sciddiff.dock.docking import DockSettings, dock
from sciddiff.dock.ligand_io import ligand_coords, load_ligand
from sciddiff.dock.pockets import DIRECTIONS, POCKET_MARGIN, buried_points, find_pockets
from sciddiff.dock.receptor import Receptor, load_receptor

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


@pytest.mark.parametrize("cid", ["1s3v", "1uou", "1ia1"])
def test_crystal_ligand_fits_one_of_the_top_pockets(cid):
    rec = load_receptor(EXAMPLES / cid / f"{cid}_protein.pdb.gz")
    xyz = ligand_coords(load_ligand(EXAMPLES / cid / f"{cid}_ligand.sdf"))
    extent = float(np.ptp(xyz, 0).max())
    boxes = find_pockets(rec, n=3, ligand_extent=extent)
    assert 1 <= len(boxes) <= 3
    assert any(b.contains(xyz).all() for b in boxes)  # the whole crystal ligand, not only its centroid
    for b in boxes:  # ligand-sized boxes within the protein's extent
        np.testing.assert_allclose(b.size, extent + 2 * POCKET_MARGIN, rtol=1e-6)
        assert np.all(b.center > rec.coords.min(0)) and np.all(b.center < rec.coords.max(0))


def _tunnel_receptor(length: float = 40.0, width: float = 10.0) -> Receptor:
    """A block of carbon atoms (1.5 A lattice) pierced along x by a square tunnel `width` A wide."""
    axes = [np.arange(0, length + 0.1, 1.5), np.arange(-12, 12.1, 1.5), np.arange(-12, 12.1, 1.5)]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    xyz = xyz[(np.abs(xyz[:, 1]) > width / 2) | (np.abs(xyz[:, 2]) > width / 2)].astype(np.float32)
    n, none = len(xyz), np.zeros((0, 3), np.float32)
    return Receptor(coords=xyz, elements=np.full(n, "C"), atom_names=np.full(n, "C"), res_names=np.full(n, "UNK"),
                       atom_res=np.full(n, -1), is_hetero=np.ones(n, bool), res_type=np.zeros(0, int), res_ca=none,
                       res_n=none, res_c=none, res_sc=none, res_chain=np.zeros(0, str))


def test_a_long_tunnel_gives_several_ligand_sized_pockets():
    # one buried region much longer than the ligand: the pockets tile it instead of one box around all of it
    rec = _tunnel_receptor()
    boxes = find_pockets(rec, n=10, ligand_extent=8.0)
    assert len(boxes) >= 3
    centers = np.stack([b.center for b in boxes])
    assert np.all(np.abs(centers[:, 1:]) <= 3.0)  # inside the tunnel (walls at 6 A, free points 3 A from them)
    assert np.ptp(centers[:, 0]) > 15.0          # spread along it
    gaps = np.linalg.norm(centers[:, None] - centers[None], axis=-1)[np.triu_indices(len(boxes), 1)]
    assert gaps.min() > 4.0                      # distinct pockets, not copies of one
    for b in boxes:
        np.testing.assert_allclose(b.size, 8.0 + 2 * POCKET_MARGIN)


def test_buriedness_counts_the_rays_that_meet_protein_within_10_A():
    # marched point by point along each of the 14 rays (1 A steps): the count buried_points gives each point
    rec = load_receptor(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
    pts, buried = buried_points(rec, min_buried=0)
    assert len(pts) > 1000 and buried.min() >= 0 and buried.max() == 14
    lo = rec.coords.min(0) - 2  # the grid: nodes lo + (i, j, k) A, as many as cover the protein + 2 A
    shape = np.ceil(rec.coords.max(0) + 2 - lo).astype(int) + 1
    tree = cKDTree(rec.coords)
    for j in np.random.default_rng(0).choice(len(pts), 60, replace=False):
        node = np.rint(pts[j] - lo).astype(int)
        steps = node + DIRECTIONS.astype(int)[:, None, :] * np.arange(1, 11)[None, :, None]  # (14, 10, 3)
        inside = np.all((steps >= 0) & (steps < shape), -1)
        hit = (tree.query((lo + steps).reshape(-1, 3))[0].reshape(14, 10) < 2.0) & inside
        assert buried[j] == hit.any(1).sum()


def test_blind_dock_searches_each_pocket_and_keeps_poses_in_their_own():
    rec = load_receptor(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
    mol = load_ligand(EXAMPLES / "1uou" / "1uou_ligand.sdf")
    s = DockSettings(samples=0, random_starts=8, mc_chains=6, mc_rounds=2, poses=4, conformers=1, pockets=3,
                     refine_sites=0)
    res = dock(rec, mol, None, None, s, show_progress=False)
    assert len(res.boxes) == 3 and len(res.coords) >= 1
    assert np.all(np.diff(res.energy) >= 0)  # one energy ranks the poses of all pockets
    for x, region in zip(res.coords, res.region):  # a pose stays in the box it was searched in (its grid: + 2 A)
        assert res.boxes[int(region)].contains(x.mean(0)[None], pad=2.0)[0]


def test_blind_refinement_searches_a_ligand_box_around_the_best_pockets_best_pose():
    rec = load_receptor(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
    mol = load_ligand(EXAMPLES / "1uou" / "1uou_ligand.sdf")
    s = DockSettings(samples=0, random_starts=8, mc_chains=6, mc_rounds=2, poses=4, conformers=1, pockets=2,
                     refine_sites=0)
    plain = dock(rec, mol, None, None, s, show_progress=False)
    s.refine_sites = 1
    refined = dock(rec, mol, None, None, s, show_progress=False)
    assert len(refined.boxes) == 3 and all(np.allclose(a.center, b.center) for a, b in zip(plain.boxes, refined.boxes))
    site = refined.boxes[2]
    assert any(b.contains(site.center[None], pad=2.0)[0] for b in plain.boxes)  # around a pose found in a pocket
    assert refined.energy[0] <= plain.energy[0] + 1e-4  # the pockets' own search is unchanged; more candidates


def test_the_blind_diagnosis_example_reports_pocket_recall_of_a_split_without_docking(tmp_path):
    """`examples/dock_blind_diagnose.py --split F --pockets 0`: per complex the rank of the pocket at the site, and
    the summary's recall counts are those ranks counted (a data root of the shipped example complexes)."""
    import json
    import os
    import subprocess
    import sys

    root = tmp_path / "docking"
    (root / "splits").mkdir(parents=True)
    (root / "examples").symlink_to(EXAMPLES)
    (root / "splits" / "train.txt").write_text("examples/1s3v\n")
    split = tmp_path / "two.txt"
    split.write_text("examples/1s3v\nexamples/1uou\n")
    out = tmp_path / "recall.jsonl"
    script = EXAMPLES.parents[1] / "examples" / "dock_blind_diagnose.py"
    run = subprocess.run([sys.executable, str(script), "--split", str(split), "--pockets", "0", "--list", "4",
                          "--out", str(out)], env={**os.environ, "SCIDDIFF_DATA": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["complex"] for r in rows] == ["examples/1s3v", "examples/1uou"]
    assert all(r["rank_inside"] is not None and r["top1"] is None for r in rows)  # found, and nothing docked
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    for k in (1, 2, 3, 4):
        assert summary["site_inside_top_k"][str(k)] == sum(r["rank_inside"] < k for r in rows)
        assert summary["site_near_top_k"][str(k)] == sum(r["rank_near"] is not None and r["rank_near"] < k
                                                          for r in rows)
    assert summary["site_inside_top_k"]["4"] == 2
    bad = subprocess.run([sys.executable, str(script), "--split", str(tmp_path / "missing.txt"), "--pockets", "0",
                          "--out", str(out)], env={**os.environ, "SCIDDIFF_DATA": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("file not found: " +
                                                                                str(tmp_path / "missing.txt"))
