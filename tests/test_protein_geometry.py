"""Residue frames <-> backbone atoms, dihedrals, and PDB input/output."""
import gzip
import math

import numpy as np
import pytest
import torch
from Bio.PDB.vectors import Vector, calc_dihedral

from sciddiff.core import so3
from sciddiff.protein import geometry
from sciddiff.protein.pdbio import read_chain, write_backbone


def random_chain(length: int, seed: int = 0) -> torch.Tensor:
    """Ideal-geometry backbone with random (phi, psi) drawn near helix and strand basins."""
    g = torch.Generator().manual_seed(seed)
    helix = torch.rand(length, generator=g) < 0.5
    phi = torch.where(helix, torch.tensor(-1.1), torch.tensor(-2.1)) + 0.2 * torch.randn(length, generator=g)
    psi = torch.where(helix, torch.tensor(-0.8), torch.tensor(2.3)) + 0.2 * torch.randn(length, generator=g)
    return geometry.backbone_from_dihedrals(phi.double(), psi.double())


def test_frames_to_atoms_round_trip_is_exact_for_ideal_chains():
    bb = random_chain(40)
    rot, trans = geometry.frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])
    assert torch.allclose(rot.transpose(-1, -2) @ rot, torch.eye(3, dtype=rot.dtype).expand_as(rot), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(40, dtype=rot.dtype))
    _, psi, _ = geometry.backbone_dihedrals(bb)
    psi_last = geometry.dihedral(bb[-1, 0], bb[-1, 1], bb[-1, 2], bb[-1, 3]) - math.pi
    rebuilt = geometry.backbone_from_frames(rot, trans, psi_last=psi_last)
    assert (rebuilt - bb).abs().max() < 1e-6  # N, CA, C and O, every residue


def test_round_trip_is_rigid_motion_equivariant():
    bb = random_chain(25, seed=1)
    q = so3.uniform_so3(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    shift = torch.tensor([5.0, -2.0, 30.0], dtype=torch.float64)
    moved = bb @ q.T + shift
    rot, trans = geometry.frames_from_backbone(moved[:, 0], moved[:, 1], moved[:, 2])
    rot0, trans0 = geometry.frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])
    assert torch.allclose(rot, q @ rot0, atol=1e-12)
    assert torch.allclose(geometry.backbone_from_frames(rot, trans), geometry.backbone_from_frames(rot0, trans0) @ q.T + shift,
                          atol=1e-10)


def test_frames_from_atoms_place_ideal_backbone_geometry():
    g = torch.Generator().manual_seed(0)
    rot = so3.uniform_so3(30, generator=g, dtype=torch.float64)
    trans = torch.randn(30, 3, generator=g, dtype=torch.float64) * 10
    bb = geometry.backbone_from_frames(rot, trans)
    assert torch.allclose((bb[:, 0] - bb[:, 1]).norm(dim=-1), torch.full((30,), 1.4606, dtype=torch.float64), atol=1e-3)
    assert torch.allclose((bb[:, 2] - bb[:, 1]).norm(dim=-1), torch.full((30,), 1.526, dtype=torch.float64))
    assert torch.allclose((bb[:, 3] - bb[:, 2]).norm(dim=-1), torch.full((30,), 1.231, dtype=torch.float64))
    # O lies in the CA-C-N(i+1) plane, trans to N(i+1)
    o_dihedral = geometry.dihedral(bb[:-1, 3], bb[:-1, 1], bb[:-1, 2], bb[1:, 0])
    assert torch.allclose(o_dihedral.abs(), torch.full((29,), math.pi, dtype=torch.float64), atol=1e-9)


def test_dihedral_matches_biopython_sign_convention():
    g = np.random.default_rng(0)
    for _ in range(20):
        p = g.normal(size=(4, 3))
        ours = geometry.dihedral(*[torch.tensor(x) for x in p]).item()
        assert ours == pytest.approx(calc_dihedral(*[Vector(*x) for x in p]), abs=1e-9)


def test_ideal_helix_dihedrals_come_back():
    phi = torch.full((12,), math.radians(-57.0), dtype=torch.float64)
    psi = torch.full((12,), math.radians(-47.0), dtype=torch.float64)
    bb = geometry.backbone_from_dihedrals(phi, psi)
    phi2, psi2, omega = geometry.backbone_dihedrals(bb)
    assert torch.isnan(phi2[0]) and torch.isnan(psi2[-1])
    assert torch.allclose(phi2[1:], phi[1:]) and torch.allclose(psi2[:-1], psi[:-1])
    assert torch.allclose(omega[:-1].abs(), torch.full((11,), math.pi, dtype=torch.float64))


def test_pdb_write_read_round_trip_plain_and_gz(tmp_path):
    bb = random_chain(15, seed=2).numpy()
    path = tmp_path / "chain.pdb"
    write_backbone(path, bb)
    chain = read_chain(path)
    assert len(chain) == 15 and chain.sequence == "G" * 15 and chain.ca_breaks() == 0
    assert np.abs(chain.coords - bb).max() < 1e-3  # PDB keeps 3 decimals
    assert max(len(line) for line in path.read_text().splitlines()) == 80  # Biopython's TER line had 81
    gz = tmp_path / "chain.pdb.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(path.read_text())
    assert np.array_equal(read_chain(gz).coords, chain.coords)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left nothing behind
    from Bio.PDB import MMCIFIO, PDBParser  # mmCIF, as the PDB distributes structures now ("no model in file")

    writer = MMCIFIO()
    writer.set_structure(PDBParser(QUIET=True).get_structure("c", path))
    writer.save(str(tmp_path / "chain.cif"))
    cif = read_chain(tmp_path / "chain.cif")
    assert np.array_equal(cif.coords, chain.coords) and cif.sequence == chain.sequence


def test_write_backbone_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_backbone(tmp_path / "x.pdb", np.zeros((5, 3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        write_backbone(tmp_path / "x.pdb", np.full((5, 4, 3), np.nan))
    assert not (tmp_path / "x.pdb").exists()
