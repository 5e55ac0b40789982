"""Backbone idealization (`sciddiff.protein.refine`): ideal chains stay put, distorted ones become ideal, chains independent."""
import numpy as np
import torch

from sciddiff.core import so3
from sciddiff.protein import geometry, metrics
from sciddiff.protein.refine import IdealizeConfig, hbond_energy, idealize_frames


def helix(length: int) -> torch.Tensor:
    return torch.as_tensor(metrics.ideal_helix(length), dtype=torch.float64)


def frames(bb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return geometry.frames_from_backbone(bb[:, 0], bb[:, 1], bb[:, 2])


def distort(rot: torch.Tensor, trans: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = 0.08 * torch.randn(rot.shape[0], 3, generator=g, dtype=rot.dtype)
    return rot @ so3.exp_map(w), trans + 0.3 * torch.randn(trans.shape, generator=g, dtype=trans.dtype)


def test_ideal_helix_is_left_in_place():
    bb = helix(30)
    rot, trans = frames(bb)
    r, t = idealize_frames(rot, trans, torch.zeros(30, dtype=torch.long))
    moved = (geometry.backbone_from_frames(r, t)[:, :3] - bb[:, :3]).norm(dim=-1)
    assert moved.max() < 0.05


def test_distorted_chain_gets_ideal_peptides_and_keeps_its_fold():
    bb = helix(40)
    rot, trans = distort(*frames(bb), seed=0)
    before = geometry.backbone_from_frames(rot, trans).numpy()
    assert metrics.ca_ca_distances(before).std() > 0.2  # really distorted
    r, t = idealize_frames(rot, trans, torch.zeros(40, dtype=torch.long))
    after = geometry.backbone_from_frames(r, t).numpy()
    assert np.all(np.abs(metrics.ca_ca_distances(after) - 3.8) < 0.1)
    assert np.all(np.abs(metrics.bond_geometry(after)["C-N"] - geometry.C_N_BOND) < 0.1)
    assert metrics.ca_clashes(after) == 0
    assert np.sqrt(((after[:, 1] - before[:, 1]) ** 2).sum(-1).mean()) < 0.5  # CA RMSD to the input


def test_twisted_peptides_come_out_planar():
    # CA-CA barely depends on omega near 180 deg (zero slope): the planarity term flattens a 35 deg twist (within
    # the restraints that keep the model's atoms and phi / psi)
    phi, psi = torch.full((30,), -1.1, dtype=torch.float64), torch.full((30,), -0.7, dtype=torch.float64)
    omega = torch.full((30,), np.pi, dtype=torch.float64)
    omega[[6, 15, 22]] = np.radians(145.0)
    bb = geometry.backbone_from_dihedrals(phi, psi, omega)
    assert metrics.omega_deviation(bb.numpy()).max() > 34.0
    r, t = idealize_frames(*frames(bb), torch.zeros(30, dtype=torch.long))
    assert metrics.omega_deviation(geometry.backbone_from_frames(r, t).numpy()).max() < 15.0  # 23 before the term


def test_chains_in_one_batch_are_idealized_independently():
    a = distort(*frames(helix(20)), seed=1)
    b = distort(*frames(helix(25)), seed=2)
    alone_r, alone_t = idealize_frames(*a, torch.zeros(20, dtype=torch.long))
    rot, trans = torch.cat([b[0], a[0]]), torch.cat([b[1], a[1]])
    chain = torch.cat([torch.zeros(25, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    both_r, both_t = idealize_frames(rot, trans, chain)  # a padded to 25 residues beside b: only rounding may differ
    assert torch.allclose(both_t[25:], alone_t, atol=1e-6) and torch.allclose(both_r[25:], alone_r, atol=1e-6)
    assert (both_t[:25] - b[1]).norm(dim=-1).max() > 0.05  # b was idealized too
    with torch.inference_mode():  # as a caller's sampling loop may run it
        inf_r, inf_t = idealize_frames(rot, trans, chain)
    assert torch.equal(inf_r, both_r) and torch.equal(inf_t, both_t)


def test_hbond_energy_is_pydssps():
    from pydssp.pydssp_torch import get_hbond_map

    bb = geometry.backbone_from_frames(*distort(*frames(helix(20)), seed=3))
    table = get_hbond_map(bb, return_e=True)[0]  # [donor, acceptor]
    acceptor, donor = torch.tensor([0, 3, 10, 15]), torch.tensor([4, 7, 14, 2])
    assert torch.allclose(hbond_energy(bb, acceptor, donor), table[donor, acceptor], atol=1e-12)
    assert hbond_energy(helix(20), torch.tensor([0]), torch.tensor([4]))[0] < -1.5  # an alpha-helix i -> i+4 bond


def test_hbond_term_restores_bonds_of_a_distorted_helix():
    chain = torch.zeros(40, dtype=torch.long)
    distorted = distort(*frames(helix(40)), seed=4)
    ss = {}
    for name, cfg in (("geometry", IdealizeConfig(hbond_weight=0.0)), ("hbonds", IdealizeConfig())):
        bb = geometry.backbone_from_frames(*idealize_frames(*distorted, chain, cfg)).numpy()
        ss[name] = (metrics.secondary_structure(bb) == "H").sum()
        assert metrics.ca_clashes(bb) == 0 and np.all(np.abs(metrics.ca_ca_distances(bb) - 3.8) < 0.1)
    assert ss["hbonds"] > ss["geometry"], ss
