"""The Vina-like scoring function: typing, gradients, grid vs exact, and that it prefers the crystal pose."""
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from sciddiff.dock import ligand, scoring
from sciddiff.dock.box import Box, box_from_ligand
from sciddiff.dock.ligand_io import ligand_coords, load_ligand
from sciddiff.dock.pose import PoseSpace
from sciddiff.dock.receptor import load_receptor
from sciddiff.dock.search import fit_pose, local_opt, move, pose_gradient

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


@pytest.fixture(scope="module")
def complex_1uou():
    rec = load_receptor(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
    mol = load_ligand(EXAMPLES / "1uou" / "1uou_ligand.sdf")
    tors = ligand.rotatable_torsions(mol)
    box = box_from_ligand(EXAMPLES / "1uou" / "1uou_ligand.sdf")
    return rec, mol, tors, box, scoring.ScoringFunction(rec, mol, tors.n, region=box)


def test_ligand_typing():
    mol = Chem.MolFromSmiles("CC(=O)Nc1ccncc1CCl")  # acetanilide-like with a pyridine N and a chloride
    t = scoring.ligand_types(mol)
    sym = [a.GetSymbol() for a in mol.GetAtoms()]
    o, amide_n, pyr_n, cl = sym.index("O"), 3, 7, sym.index("Cl")
    assert t.acceptor[o] and not t.donor[o]
    assert t.donor[amide_n] and not t.acceptor[amide_n]
    assert t.acceptor[pyr_n] and not t.donor[pyr_n]
    assert t.hydrophobic[cl] and t.hydrophobic[0] and not t.hydrophobic[1]  # C=O carbon is polar


def test_receptor_typing_uses_residue_templates(complex_1uou):
    rec = complex_1uou[0]
    t = scoring.receptor_types(rec)
    ser_og = (rec.res_names == "SER") & (rec.atom_names == "OG")
    pro_n = (rec.res_names == "PRO") & (rec.atom_names == "N")
    bb_n = (rec.res_names != "PRO") & (rec.atom_names == "N") & ~rec.is_hetero
    assert t.donor[ser_og].all() and t.acceptor[ser_og].all()
    assert not t.donor[pro_n].any() and t.donor[bb_n].all()
    assert not t.hydrophobic[(rec.atom_names == "C")].any()  # carbonyl carbons touch O
    # as in Vina: S is neither donor nor acceptor, and carbon bonded to S (C-S 1.82 A) is not hydrophobic
    cys_sg = (rec.res_names == "CYS") & (rec.atom_names == "SG")
    c_s = ((rec.res_names == "MET") & np.isin(rec.atom_names, ["CG", "CE"])) | \
        ((rec.res_names == "CYS") & (rec.atom_names == "CB"))
    assert cys_sg.any() and not (t.donor[cys_sg].any() or t.acceptor[cys_sg].any())
    assert c_s.any() and not t.hydrophobic[c_s].any()
    assert t.hydrophobic[(rec.res_names == "MET") & (rec.atom_names == "CB")].all()


def _pdb_line(serial: int, name: str, res: str, resseq: int, xyz, element: str, het: bool = False) -> str:
    return (f"{'HETATM' if het else 'ATOM':<6}{serial:>5} {name:<4} {res:>3} A{resseq:>4}    "
            f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {element:>2}")


def test_receptor_hydrogens_in_the_file_decide_donors_and_acceptors(tmp_path):
    """Where the file gives a residue's hydrogens they decide (an N-H donates and does not accept); residues without
    hydrogens, and an imidazole with no N-H (a preparation artefact), keep the templates (His N both)."""
    atoms = []  # residue, resseq, [(name, element, xyz)], hetero
    for seq, ring_h in ((1, "HD1"), (2, None)):  # His 1: ND1-H tautomer; His 2: no ring N-H in a file with H
        x0 = 10.0 * seq
        hs = [("H", "H", (x0 - 1.0, 0, 0))] + ([(ring_h, "H", (x0 + 3.0, 2.0, 0))] if ring_h else [])
        atoms.append(("HIS", seq, [("N", "N", (x0, 0, 0)), ("CA", "C", (x0 + 1.5, 0, 0)), ("C", "C", (x0 + 2, 1.4, 0)),
                                   ("O", "O", (x0 + 3, 1.6, 1)), ("CB", "C", (x0 + 2, -1.4, 0)),
                                   ("ND1", "N", (x0 + 3.0, 1.0, 0)), ("NE2", "N", (x0 + 4.5, -0.5, 0))] + hs, False))
    atoms.append(("LYS", 3, [("N", "N", (30, 0, 0)), ("CA", "C", (31.5, 0, 0)), ("NZ", "N", (33, 2, 0))], False))
    atoms.append(("NAD", 4, [("N6A", "N", (40, 0, 0)), ("H61", "H", (40.9, 0.4, 0)), ("N1A", "N", (43, 0, 0))], True))
    lines, serial = [], 1
    for res, seq, rows, het in atoms:
        for name, el, xyz in rows:
            lines.append(_pdb_line(serial, name, res, seq, xyz, el, het))
            serial += 1
    (tmp_path / "p.pdb").write_text("\n".join(lines) + "\nEND\n")
    rec = load_receptor(tmp_path / "p.pdb")
    t = scoring.receptor_types(rec)

    his = np.nonzero(rec.res_names == "HIS")[0]
    nd1, ne2 = his[rec.atom_names[his] == "ND1"], his[rec.atom_names[his] == "NE2"]
    assert t.donor[nd1[0]] and not t.acceptor[nd1[0]]          # ND1-H
    assert t.acceptor[ne2[0]] and not t.donor[ne2[0]]          # the free ring N accepts
    assert t.donor[nd1[1]] and t.acceptor[nd1[1]] and t.donor[ne2[1]] and t.acceptor[ne2[1]]  # template
    lys_n = np.nonzero((rec.res_names == "LYS") & np.isin(rec.atom_names, ["N", "NZ"]))[0]
    assert t.donor[lys_n].all()                                 # no hydrogens in the residue: template
    n6, n1 = (int(np.nonzero(rec.atom_names == n)[0][0]) for n in ("N6A", "N1A"))
    assert t.donor[n6] and not t.acceptor[n6]                  # cofactor amine: donates
    assert t.acceptor[n1] and not t.donor[n1]
    assert rec.hydrogens[n6] == 1 and (rec.hydrogens[lys_n] == -1).all()


def test_elements_without_an_element_column_and_autodock_types_read_right(tmp_path, capfd):
    """No element columns (MD and old files): an amino acid's left-justified "HG2 " (biopython: X) or a serine's
    "HG  " (biopython: mercury) is a hydrogen (RDKit also logged a C++ stack trace per unknown symbol); a mercury ion
    is still mercury, and an element column is kept (a zinc written inside a CYS residue). PDBQT types are
    case-sensitive as AutoDock's: NA an acceptor nitrogen, Na sodium."""
    def line(serial, name, res, seq, xyz, het=False, element=""):  # name as given in columns 13-16
        return (f"{'HETATM' if het else 'ATOM':<6}{serial:>5} {name:<4} {res:>3} A{seq:>4}    "
                f"{xyz[0]:8.3f}{xyz[1]:8.3f}{xyz[2]:8.3f}  1.00  0.00          {element:>2}")
    rows = [(" N  ", "LYS", 1, (0, 0, 0), ""), (" CA ", "LYS", 1, (1.5, 0, 0), ""), (" CB ", "LYS", 1, (2, -1.4, 0), ""),
            ("HG2 ", "LYS", 1, (2.9, -1.5, 0.5), ""), ("1HB ", "LYS", 1, (1.8, -2, 0.8), ""),
            (" CA ", "SER", 2, (5, 0, 0), ""), (" OG ", "SER", 2, (6, 1, 0), ""), ("HG  ", "SER", 2, (6.5, 1.7, 0), ""),
            (" CA ", "CYS", 3, (10, 4, 0), "C"), ("ZN  ", "CYS", 3, (12, 4, 0), "ZN"), ("HG  ", " HG", 4, (8, 0, 0), ""),
            (" C1 ", "LIG", 5, (14, 0, 0), ""), ("HN1 ", "LIG", 5, (14.5, 0.9, 0), "")]  # a cofactor's H, "Hn"?
    (tmp_path / "p.pdb").write_text("\n".join(line(i + 1, n, r, q, x, r in (" HG", "LIG"), e) for i, (n, r, q, x, e)
                                              in enumerate(rows)) + "\nEND\n")
    capfd.readouterr()
    rec = load_receptor(tmp_path / "p.pdb")
    assert rec.elements.tolist() == ["N", "C", "C", "C", "O", "C", "Zn", "Hg", "C"]
    assert "Element 'Hn' not found" not in capfd.readouterr().err  # RDKit's C++ stack trace, once per such atom
    pdbqt = ["ATOM      1  CA  HIS A   1       0.000   1.400   0.000  1.00  0.00     0.180 C ",
             "ATOM      2  ND1 HIS A   1       0.000   0.000   0.000  1.00  0.00    -0.246 NA",
             "ATOM      3  CG  HIS A   1       1.400   0.000   0.000  1.00  0.00     0.200 A ",
             "HETATM    4 NA    NA B   2       6.000   0.000   0.000  1.00  0.00     1.000 Na"]
    (tmp_path / "p.pdbqt").write_text("\n".join(pdbqt) + "\n")
    assert load_receptor(tmp_path / "p.pdbqt").elements.tolist() == ["C", "N", "C", "Na"]


def test_a_donor_acceptor_pair_is_one_hbond_as_vina_counts_it(tmp_path):
    # methanol's O (donor and acceptor) 2.7 A from Ser OG (donor and acceptor, template typing): Vina's term is 1,
    # the mask counted it twice (6nv9's ligand O - Thr OG1: 6.460 against Vina 1.2.7's 5.459)
    rows = [("N", "N", (0, 0, 0)), ("CA", "C", (1.5, 0, 0)), ("C", "C", (2, 1.4, 0)), ("O", "O", (3, 1.6, 1)),
            ("CB", "C", (2, -1.4, 0)), ("OG", "O", (3.2, -2.2, 0))]
    (tmp_path / "p.pdb").write_text("\n".join(_pdb_line(i + 1, n, "SER", 1, xyz, el) for i, (n, el, xyz) in
                                             enumerate(rows)) + "\nEND\n")
    rec = load_receptor(tmp_path / "p.pdb")
    mol = Chem.MolFromSmiles("CO")
    sf = scoring.ScoringFunction(rec, mol, 0)
    og = np.array([3.2, -2.2, 0.0])
    x = torch.tensor([[og + [0.0, -2.7 - 1.43, 0.0], og + [0.0, -2.7, 0.0]]], dtype=torch.float64)  # C, then O
    hbond = sf.inter_terms(x)[0, scoring.PAIR_TERMS.index("hbond")]
    assert float(hbond) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("exact", [True, False])
def test_gradient_matches_finite_differences(complex_1uou, exact):
    _, mol, _, _, sf = complex_1uou
    x0 = torch.as_tensor(ligand_coords(mol), dtype=torch.float64)[None]
    x0 = x0 + 0.3 * torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e, g = sf.energy_and_gradient(x0, exact=exact)
    assert torch.allclose(e, sf.energy(x0, exact=exact))
    eps = 1e-5
    for i, k in [(0, 0), (3, 1), (7, 2), (12, 0)]:
        xp, xm = x0.clone(), x0.clone()
        xp[0, i, k] += eps
        xm[0, i, k] -= eps
        fd = (sf.energy(xp, exact=exact) - sf.energy(xm, exact=exact)) / (2 * eps)
        assert abs(float(fd[0]) - float(g[0, i, k])) < 1e-4 * max(1.0, abs(float(fd[0])))
    assert torch.isfinite(e).all()


def test_grid_gradient_matches_grid_sample(complex_1uou):
    """The hand-written trilinear lookup is torch's grid_sample (align_corners, border padding), value and gradient."""
    _, mol, _, box, sf = complex_1uou
    x = torch.as_tensor(ligand_coords(mol))[None] + 4.0 * torch.randn(6, 1, 3, generator=torch.Generator().manual_seed(2))
    x = x.clone().requires_grad_()
    cls = torch.as_tensor(sf.atom_class)
    for grid in [sf.map]:
        value, grad = grid.interpolate(x.detach(), cls)
        hi = grid.lo + grid.spacing * (torch.as_tensor(grid.values.shape[1:]) - 1)
        u = ((x - grid.lo) / (hi - grid.lo) * 2 - 1).flip(-1).reshape(1, -1, 1, 1, 3)
        ref = torch.nn.functional.grid_sample(grid.values[None], u, mode="bilinear", padding_mode="border",
                                              align_corners=True).reshape(len(grid.values), *x.shape[:2])
        ref = ref.gather(0, cls[None, None].expand(1, x.shape[0], -1))[0]
        (ref_grad,) = torch.autograd.grad(ref.sum(), x)
        assert torch.allclose(value, ref.detach(), atol=1e-4)
        assert torch.allclose(grad, ref_grad, atol=1e-4)


def test_pose_gradient_matches_finite_differences():
    """Rigid and torsion components of the search gradient, on a ligand with nested and disjoint rotatable bonds."""
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCc1ccc(OCC(=O)NCCc2ccccc2)cc1"))
    from rdkit.Chem import AllChem
    AllChem.EmbedMolecule(mol, randomSeed=3)
    mol = Chem.RemoveHs(mol)
    tors = ligand.rotatable_torsions(mol)
    assert tors.n >= 6
    x0 = torch.as_tensor(ligand_coords(mol), dtype=torch.float64)
    space = PoseSpace(x0, tors)
    target = torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def energy(x):  # any smooth function of all coordinates will do
        return ((x - target) ** 2).sum((-1, -2)) + torch.sin(x).sum((-1, -2))

    x = x0[None]
    grad_x = 2 * (x - target) + torch.cos(x)
    g = pose_gradient(x, grad_x, space)[0]
    eps = 1e-6
    for k in range(6 + tors.n):
        step = torch.zeros(1, 6 + tors.n, dtype=torch.float64)
        step[0, k] = eps
        fd = (energy(move(x, step, space)) - energy(move(x, -step, space))) / (2 * eps)
        assert abs(float(fd[0]) - float(g[k])) < 1e-5 * max(1.0, abs(float(fd[0])))


def test_coarse_map_resampled_on_the_fine_grid_is_exact():
    """Why the 1 A gauss2 map can be added into the 0.5 A map at its nodes: with a shared origin, the coarse
    trilinear interpolant restricted to a fine cell is trilinear, so the fine lookup reproduces it (value and
    gradient)."""
    gen = torch.Generator().manual_seed(3)
    lo = torch.tensor([-1.0, 2.0, 0.5], dtype=torch.float64)
    coarse = scoring.GridMap(torch.randn(2, 5, 6, 4, generator=gen, dtype=torch.float64), lo,
                             torch.ones(3, dtype=torch.float64))
    shape = (9, 11, 7)  # every coarse node is a fine node
    axes = [lo[k] + 0.5 * torch.arange(shape[k], dtype=torch.float64) for k in range(3)]
    nodes = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3)
    cls = torch.arange(2)[:, None]
    fine = scoring.GridMap(coarse.interpolate(nodes, cls)[0].reshape(2, *shape), lo,
                           torch.full((3,), 0.5, dtype=torch.float64))
    x = lo + torch.rand(16, 10, 3, generator=gen, dtype=torch.float64) * torch.tensor([4.0, 5.0, 3.0])
    atom_cls = torch.randint(0, 2, (10,), generator=gen)
    for a, b in zip(fine.interpolate(x, atom_cls), coarse.interpolate(x, atom_cls)):
        assert torch.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("function", ["vina", "vinardo"])
def test_grid_nodes_hold_each_class_pair_energy_sum(complex_1uou, function):
    """At a node of both grids, each class's map is the pair energy summed over the receptor atoms that a ligand atom
    of that class would feel there (the maps share terms among classes of one radius; this checks every class)."""
    rec, mol, tors, box, _ = complex_1uou
    sf = scoring.ScoringFunction(rec, mol, tors.n, region=box, function=function)
    step = 2 if function == "vina" else 1  # vina's 1 A gauss2 map: its nodes are every second 0.5 A node
    gen = torch.Generator().manual_seed(5)
    idx = torch.stack([torch.randint(0, (n - 1) // step + 1, (40,), generator=gen) * step
                       for n in sf.map.values.shape[1:]], 1)
    nodes = sf.map.lo + idx * sf.map.spacing
    r = torch.cdist(nodes, sf.rec_xyz)
    for c, (radius, hyd, don, acc) in enumerate(sf.classes):
        hb = scoring.hbond_pairs(float(don), float(acc), sf.rec_don, sf.rec_acc)
        expected = scoring.pair_energy(r, float(radius) + sf.rec_r, float(hyd) * sf.rec_hyd, hb, fn=sf.fn).sum(-1)
        got = sf.map.values[c, idx[:, 0], idx[:, 1], idx[:, 2]]
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3), (c, (got - expected).abs().max())


def test_stacked_grids_score_each_row_in_its_own_box(complex_1uou):
    """Blind docking searches all pockets in one batch: each row must get exactly its own box's energy and gradient,
    also where a smaller box's maps were padded to the largest one's shape and for atoms outside a box."""
    rec, mol, tors, box, _ = complex_1uou
    boxes = [box, Box(center=box.center + np.float32(3.0), size=box.size * np.float32(0.7))]
    functions = [scoring.ScoringFunction(rec, mol, tors.n, region=b) for b in boxes]
    assert functions[0].map.values.shape != functions[1].map.values.shape
    which = torch.arange(12) % 2
    x = torch.as_tensor(ligand_coords(mol))[None]
    # rows of the small box centred on its far corner: about half their atoms beyond its maps, in the padding
    corner = functions[1].grid_hi - x[0].mean(0)
    x = x + which[:, None, None] * corner + torch.randn(12, 1, 3, generator=torch.Generator().manual_seed(1))
    e, g = scoring.StackedGrids(functions).rows(which).energy_and_gradient(x)
    for k, sf in enumerate(functions):
        e_k, g_k = sf.energy_and_gradient(x[which == k])
        assert torch.allclose(e[which == k], e_k, rtol=1e-5, atol=1e-4)
        assert torch.allclose(g[which == k], g_k, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("function", ["vina", "vinardo"])
def test_boxes_sharing_lattice_nodes_get_the_maps_they_would_compute_alone(complex_1uou, function):
    """Blind docking's overlapping boxes share grid nodes: a box built after others (most of its nodes known) has
    the maps it gets built first, on whole-Angstrom bounds that cover the box + its pad."""
    rec, mol, tors, box, _ = complex_1uou
    shifted = [Box(center=box.center + np.float32(d), size=box.size) for d in (0.0, 1.3, -2.6)]
    nodes = scoring.LatticeNodes()
    shared = [scoring.ScoringFunction(rec, mol, tors.n, region=b, function=function, nodes=nodes) for b in shifted]
    alone = scoring.ScoringFunction(rec, mol, tors.n, region=shifted[2], function=function,
                                    nodes=scoring.LatticeNodes())
    assert torch.equal(shared[2].map.lo, alone.map.lo) and torch.equal(shared[2].grid_hi, alone.grid_hi)
    assert torch.allclose(shared[2].map.values, alone.map.values, rtol=1e-5, atol=1e-5)
    lo = shifted[2].center - shifted[2].size / 2 - 2.0
    assert torch.equal(alone.map.lo, torch.as_tensor(np.floor(lo)))  # snapped outward, so still covering the box
    assert bool((alone.grid_hi >= torch.as_tensor(shifted[2].center + shifted[2].size / 2 + 2.0)).all())
    fine_nodes, _ = nodes.known[(0.5, "short")]
    assert len(fine_nodes) < 0.8 * sum(int(np.prod(sf.map.values.shape[1:])) for sf in shared)  # computed once


@pytest.mark.parametrize("function", ["vina", "vinardo"])
def test_grid_tracks_exact_energy(complex_1uou, function):
    rec, mol, tors, box, _ = complex_1uou
    sf = scoring.ScoringFunction(rec, mol, tors.n, region=box, function=function)
    x = torch.as_tensor(ligand_coords(mol))[None]
    shifts = torch.randn(8, 1, 3, generator=torch.Generator().manual_seed(0)) * 1.0
    exact, grid = sf.inter_exact(x + shifts), sf.inter_grid(x + shifts)
    # trilinear interpolation of convex terms overestimates a little; the ranking must survive
    assert (grid - exact).abs().max() < 0.25 * exact.abs().max() + 2.0
    assert np.corrcoef(exact.numpy(), grid.numpy())[0, 1] > 0.98


def test_crystal_pose_is_a_deep_minimum(complex_1uou):
    _, mol, tors, box, sf = complex_1uou
    xtal = torch.as_tensor(ligand_coords(mol))
    space = PoseSpace(xtal, tors)
    tr, rot, theta = fit_pose(space, xtal[None])
    relaxed = local_opt(sf, space, tr, rot, theta, steps=30, lr=(0.05, 0.02, 0.05), exact=True)
    x = space.coords(relaxed.tr, relaxed.rot, relaxed.theta, realign=False)
    assert ligand.symmetric_rmsd(mol, x[0].numpy(), xtal.numpy()) < 1.0  # relaxing barely moves it
    far = xtal[None] + torch.tensor([[[4.0, 0.0, 0.0]]])
    assert sf.score(x) < -5.0 and sf.score(x) < sf.score(far)
