"""Blind docking's pocket finder on the example complexes."""
from pathlib import Path

import numpy as np
import pytest

from sciddiff.dock import io
from sciddiff.dock.pockets import find_pockets

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


@pytest.mark.parametrize("cid", ["1s3v", "1uou", "1ia1"])
def test_crystal_site_is_among_the_top_pockets(cid):
    rec = io.load_receptor(EXAMPLES / cid / f"{cid}_protein.pdb.gz")
    xyz = io.ligand_coords(io.load_ligand(EXAMPLES / cid / f"{cid}_ligand.sdf"))
    boxes = find_pockets(rec, n=3, ligand_extent=float(np.ptp(xyz, 0).max()))
    assert 1 <= len(boxes) <= 3
    assert any(b.contains(xyz.mean(0)[None])[0] for b in boxes)
    for b in boxes:  # boxes hold the ligand and stay within the protein's extent
        assert np.all(b.size >= np.ptp(xyz, 0).max()) and np.all(b.size <= 28.0)
        assert np.all(b.center > rec.coords.min(0)) and np.all(b.center < rec.coords.max(0))
