"""Ligand flexibility: rotatable bonds, torsion application, Kabsch re-alignment, conformer matching, RMSD."""
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from sciddiff.cli import UserError
from sciddiff.dock import ligand
from sciddiff.dock.box import box_from_ligand
from sciddiff.dock.ligand_io import (INPUT_H_PROP, POSE_TAGS, REPAIRS_PROP, ligand_coords, ligand_repairs,
                                     ligand_smiles, load_ligand, load_ligands, pose_mol)
from sciddiff.dock.receptor import complex_pdb, load_receptor

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def _mol(smiles: str) -> Chem.Mol:
    mol = Chem.MolFromSmiles(smiles)
    mol.AddConformer(Chem.Conformer(mol.GetNumAtoms()))
    return mol


@pytest.mark.parametrize("smiles,n", [
    ("CCCC", 1),              # only the central bond: each side keeps >= 2 heavy atoms
    ("CCO", 0),               # terminal groups do not count
    ("CC(=O)NCC", 1),         # the amide C-N bond is frozen; N-CH2 turns, CH2-CH3 is terminal
    ("c1ccccc1CCc1ccccc1", 3),
    ("C1CCCCC1", 0),          # ring bonds never
    ("CC#CC", 0),
])
def test_rotatable_bond_counts(smiles, n):
    assert ligand.rotatable_torsions(_mol(smiles)).n == n


def test_moving_side_is_the_smaller_one():
    mol = _mol("CCCCc1ccccc1")  # butylbenzene: the chain side is smaller at every bond
    tors = ligand.rotatable_torsions(mol)
    assert tors.n == 3
    ring = {a.GetIdx() for a in mol.GetAtoms() if a.GetIsAromatic()}
    for (u, v), mask in zip(tors.bonds, tors.mask):
        assert mask.sum() <= len(mask) - mask.sum()
        assert mask[v] and not mask[u]
        assert not any(mask[i] for i in ring)


@pytest.fixture(scope="module")
def example():
    mol = load_ligand(EXAMPLES / "1s3v" / "1s3v_ligand.sdf")
    return mol, ligand_coords(mol), ligand.rotatable_torsions(mol)


def test_torsion_change_keeps_bonds_and_moves_only_the_moving_side(example):
    mol, xyz, tors = example
    x = torch.as_tensor(xyz, dtype=torch.float64)
    delta = torch.zeros(tors.n, dtype=torch.float64)
    delta[0] = 1.3
    y = ligand.set_torsions(x, tors, delta, realign=False)
    bonds = np.array([(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()])
    d0 = (x[bonds[:, 0]] - x[bonds[:, 1]]).norm(dim=-1)
    d1 = (y[bonds[:, 0]] - y[bonds[:, 1]]).norm(dim=-1)
    torch.testing.assert_close(d0, d1)
    moved = (y - x).norm(dim=-1) > 1e-9
    assert moved.any()
    assert not moved[~torch.as_tensor(tors.mask[0])].any()
    # the dihedral of that bond changed by exactly delta, the others not at all
    idx = torch.as_tensor(tors.dihedral)
    change = torch.remainder(ligand.dihedral_angles(y, idx) - ligand.dihedral_angles(x, idx) + np.pi, 2 * np.pi) - np.pi
    torch.testing.assert_close(change, delta)


@pytest.mark.parametrize("smiles", [
    "CCCCCCCCCC(=O)OCC(O)CO",                          # a chain: up to 7 nested moving sides (3 rounds)
    "CC(C)Cc1ccc(cc1)C(C)C(=O)NCCOCCN(CC)CC",          # branches on both sides of a ring
    "OCC(CO)(CO)COCC(CO)(CO)CO",                       # a branched core: many sides side by side
])
def test_all_bonds_at_once_equal_one_at_a_time(smiles):
    """The forward-kinematics path (all bonds turned at once about their input axes) against the bonds turned one
    after another about their current axes, on batched random turns; and a mask whose sides do not nest falls back
    to the one-at-a-time path."""
    mol = Chem.MolFromSmiles(smiles)
    molh = Chem.AddHs(mol)
    AllChem.EmbedMolecule(molh, randomSeed=1)
    mol = Chem.RemoveHs(molh)
    tors = ligand.rotatable_torsions(mol)
    assert tors.n > 4 and ligand.torsion_tree(tors.mask) is not None
    g = torch.Generator().manual_seed(0)
    x = torch.as_tensor(mol.GetConformer().GetPositions()).expand(5, -1, -1).clone()
    delta = (torch.rand(5, tors.n, generator=g, dtype=torch.float64) * 2 - 1) * np.pi
    bonds, mask = torch.as_tensor(tors.bonds), torch.as_tensor(tors.mask)
    at_once = ligand.apply_torsion_deltas(x, bonds, mask, delta)
    one_by_one = x
    for k in reversed(range(tors.n)):  # any order gives the same result
        one_by_one = ligand.apply_torsion_deltas(one_by_one, bonds[k:k + 1], mask[k:k + 1], delta[:, k:k + 1])
    torch.testing.assert_close(at_once, one_by_one, atol=1e-10, rtol=0)
    idx = torch.as_tensor(tors.dihedral)
    change = torch.remainder(ligand.dihedral_angles(at_once, idx) - ligand.dihedral_angles(x, idx) + np.pi, 2 * np.pi)
    torch.testing.assert_close(change - np.pi, delta)
    crossed = mask.clone()
    crossed[0] = ~crossed[0]  # the larger side of bond 0: it overlaps other sides without nesting
    assert ligand.torsion_tree(crossed) is None
    sequential = x
    for k in range(tors.n):
        sequential = ligand.apply_torsion_deltas(sequential, bonds[k:k + 1], crossed[k:k + 1], delta[:, k:k + 1])
    torch.testing.assert_close(ligand.apply_torsion_deltas(x, bonds, crossed, delta), sequential)


def test_kabsch_realignment_keeps_the_rigid_frame(example):
    mol, xyz, tors = example
    x = torch.as_tensor(xyz, dtype=torch.float64)
    delta = torch.linspace(-2, 2, tors.n, dtype=torch.float64)
    y = ligand.set_torsions(x, tors, delta)
    torch.testing.assert_close(y.mean(0), x.mean(0))  # centroid unchanged
    # re-aligned pose is the least-squares fit: no extra rotation improves it
    r, t = ligand.kabsch(y, x)
    torch.testing.assert_close(r, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)
    # and Kabsch recovers a known rigid motion
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    q = q * torch.sign(torch.linalg.det(q))
    r, t = ligand.kabsch(x, x @ q.T + 1.5)
    torch.testing.assert_close(r, q)


def test_conformer_matching_reproduces_crystal_torsions(example):
    mol, xyz, tors = example
    conf = ligand.generate_conformers(mol, 1, seed=0)[0]
    matched = ligand.match_torsions(conf, xyz, tors)
    idx = torch.as_tensor(tors.dihedral)
    a = ligand.dihedral_angles(torch.as_tensor(matched, dtype=torch.float64), idx)
    b = ligand.dihedral_angles(torch.as_tensor(xyz, dtype=torch.float64), idx)
    assert torch.allclose(torch.cos(a - b), torch.ones_like(a), atol=1e-4)
    assert ligand.symmetric_rmsd(mol, matched, xyz) < ligand.symmetric_rmsd(mol, conf, xyz)


def test_conformers_are_seeded(example):
    mol = example[0]
    a = ligand.generate_conformers(mol, 1, seed=3)[0]
    b = ligand.generate_conformers(mol, 1, seed=3)[0]
    np.testing.assert_array_equal(a, b)


def test_symmetric_rmsd_sees_through_atom_permutations():
    mol = Chem.MolFromSmiles("OC(=O)c1ccccc1")
    x = ligand.generate_conformers(mol, 1, seed=0)[0]
    ring = [a.GetIdx() for a in mol.GetAtoms() if a.GetIsAromatic()]
    # swap symmetric ring carbons (ortho/ortho', meta/meta') - a graph automorphism
    perm = list(range(mol.GetNumAtoms()))
    perm[ring[1]], perm[ring[5]] = ring[5], ring[1]
    perm[ring[2]], perm[ring[4]] = ring[4], ring[2]
    y = x[perm]
    plain = np.sqrt(((x - y) ** 2).sum(-1).mean())
    assert plain > 0.5
    assert ligand.symmetric_rmsd(mol, y, x) < 1e-3


def test_several_conformers_differ_and_the_first_does_not_depend_on_n():
    # RDKit seeds conformer k of one EmbedMultipleConfs call with seed * (k + 1): all equal for seed 0
    mol = Chem.MolFromSmiles("OC1C(O)C(O)C(OP(=O)(O)O)C(O)C1O")  # inositol phosphate: ring puckers differ
    confs = ligand.generate_conformers(mol, 4, seed=0)
    np.testing.assert_array_equal(confs[0], ligand.generate_conformers(mol, 1, seed=0)[0])
    assert min(np.abs(confs[0] - c).max() for c in confs[1:]) > 0.1


def test_embedding_a_hypervalent_sulfur_logs_nothing(capfd):
    # RDKit's embedder logs "UFFTYPER: Unrecognized atom type: S_6+6" to the C++ stderr: noise in a user's terminal
    confs = ligand.generate_conformers(Chem.MolFromSmiles("FS(F)(F)(F)(F)c1ccccc1"), 1)
    assert confs[0].shape == (12, 3)
    out, err = capfd.readouterr()
    assert "UFFTYPER" not in err + out


def test_distinct_shapes_ignores_torsion_only_differences():
    mol = Chem.MolFromSmiles("c1ccccc1CCCc1ccccc1")  # rigid rings: shapes differ only by torsions
    tors = ligand.rotatable_torsions(mol)
    confs = ligand.generate_conformers(mol, 4, seed=0)
    assert ligand.distinct_shapes(confs, tors) == [0]
    ring = Chem.MolFromSmiles("C[C@H]1CC[C@@H](C)CC1")  # cis-1,4-dimethylcyclohexane: two chairs
    x = ligand.generate_conformers(ring, 8, seed=0)
    keep = ligand.distinct_shapes(x, ligand.rotatable_torsions(ring), threshold=0.3)
    assert keep[0] == 0 and len(keep) >= 2


def test_pose_space_with_several_conformers_matches_one_space_per_conformer():
    from sciddiff.dock.pose import PoseSpace

    mol = Chem.MolFromSmiles("OC1CCC(CCc2ccccc2)CC1")
    tors = ligand.rotatable_torsions(mol)
    confs = [torch.as_tensor(c, dtype=torch.float64) for c in ligand.generate_conformers(mol, 2, seed=0)]
    both = PoseSpace(torch.stack(confs), tors)
    gen = torch.Generator().manual_seed(0)
    tr, rot, theta = both.random(4, torch.zeros(3, dtype=torch.float64), 2.0, generator=gen)
    conf = torch.tensor([0, 1, 1, 0])
    x = both.coords(tr, rot, theta, realign=False, conf=conf)
    for k in (0, 1):
        y = PoseSpace(confs[k], tors).coords(tr, rot, theta, realign=False)
        torch.testing.assert_close(x[conf == k], y[conf == k])


def test_either_double_bonds_take_the_geometry_of_a_3d_file(tmp_path):
    # SD files often flag double bonds "either" (bond stereo 3); the 3D coordinates still say which isomer it is
    mol = Chem.AddHs(Chem.MolFromSmiles("OC(=O)/C=C/c1ccccc1"))  # trans-cinnamic acid
    AllChem.EmbedMolecule(mol, randomSeed=0)
    heavy = Chem.RemoveHs(mol)
    block = Chem.MolToMolBlock(heavy).splitlines()
    line = 4 + heavy.GetNumAtoms() + heavy.GetBondBetweenAtoms(3, 4).GetIdx()  # the C=C bond's line
    block[line] = block[line][:9] + "  3" + block[line][12:]
    path = tmp_path / "either.sdf"
    path.write_text("\n".join(block) + "\n$$$$\n")
    assert Chem.MolFromMolFile(str(path)).GetBondBetweenAtoms(3, 4).GetStereo() == Chem.BondStereo.STEREOANY
    loaded = load_ligand(path)
    assert loaded.GetBondBetweenAtoms(3, 4).GetStereo() == Chem.BondStereo.STEREOE
    conf = ligand.generate_conformers(loaded, 1, seed=0)[0]  # the docked conformer keeps it
    x = torch.as_tensor(conf, dtype=torch.float64)
    assert abs(float(ligand.dihedral_angles(x, torch.tensor([[1, 3, 4, 5]]))[0])) > 2.5


def test_smiles_file_with_a_title_line(tmp_path):
    path = tmp_path / "ligands.smi"
    path.write_text("SMILES Name\nCC(=O)Nc1ccc(O)cc1 paracetamol\nCCO ethanol\n")
    assert Chem.MolToSmiles(load_ligand(path)) == "CC(=O)Nc1ccc(O)cc1"  # the first molecule


MOL2_ETHANOL = """@<TRIPOS>MOLECULE
{name}
 3 2 0 0 0
SMALL
NO_CHARGES

@<TRIPOS>ATOM
      1 C1          0.0000    0.0000    0.0000 C.3     1  LIG1        0.0000
      2 C2          1.5200    0.0000    0.0000 C.3     1  LIG1        0.0000
      3 O1          2.0300    1.3400    0.0000 O.3     1  LIG1        0.0000
@<TRIPOS>BOND
     1     1     2    1
     2     2     3    1
"""


def test_libraries_read_every_molecule_with_its_name(tmp_path):
    smi = tmp_path / "lib.smi"
    smi.write_text("SMILES Name\nCC(=O)Nc1ccc(O)cc1 paracetamol\nC1CC not a ring\nCCO\n")
    records = load_ligands(smi)
    assert [r.name for r in records] == ["paracetamol", "not a ring", "lib_3"]
    assert records[0].mol.GetNumAtoms() == 11 and records[2].mol.GetNumAtoms() == 3
    assert records[1].mol is None and "molecule 2" in records[1].error
    mol2 = tmp_path / "lib.mol2"
    mol2.write_text(MOL2_ETHANOL.format(name="first") + MOL2_ETHANOL.format(name="second"))
    assert [(r.name, r.mol.GetNumAtoms()) for r in load_ligands(mol2)] == [("first", 3), ("second", 3)]
    assert load_ligand(mol2).GetNumAtoms() == 3 and len(load_ligands(mol2, limit=1)) == 1


def test_complex_ligand_falls_back_to_a_readable_file(tmp_path):
    from sciddiff.cli import UserError
    from sciddiff.dock.data import complex_ligand

    folder = tmp_path / "set" / "1abc"
    folder.mkdir(parents=True)
    (folder / "1abc_ligand.sdf").write_text("not a molecule\n")
    with pytest.raises(UserError, match="1abc_ligand.sdf"):  # the first file's error when none loads
        complex_ligand(tmp_path, "set/1abc")
    (folder / "1abc_ligand.mol2").write_text(MOL2_ETHANOL.format(name="ethanol"))
    mol, path = complex_ligand(tmp_path, "set/1abc")
    assert path.endswith("1abc_ligand.mol2") and mol.GetNumAtoms() == 3


def test_pdb_ligand_is_refused_but_boxes_from_it(tmp_path):
    # no bond orders in PDB: RDKit would read benzoic acid as a saturated ring, a different molecule
    mol = Chem.AddHs(Chem.MolFromSmiles("OC(=O)c1ccccc1"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    path = tmp_path / "lig.pdb"
    path.write_text("".join(ln + "\n" for ln in Chem.MolToPDBBlock(mol).splitlines() if not ln.startswith("CONECT")))
    with pytest.raises(UserError, match="bond orders"):
        load_ligand(path)
    assert box_from_ligand(path).size.min() > 8


def _molblock_without_h(smiles: str, seed: int = 0) -> str:
    """A 3D SD record of `smiles` with aromatic bond orders (type 4) and no hydrogens (many PDBbind files)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    return Chem.MolToMolBlock(Chem.RemoveHs(mol), kekulize=False)


@pytest.mark.parametrize("smiles,added", [("Cc1ccc2[nH]ccc2c1", 1), ("Cc1ncc[nH]1", 1), ("c1cc[nH]c1-c1ccc[nH]1", 2)])
def test_aromatic_nitrogen_without_its_hydrogen_is_repaired(tmp_path, smiles, added):
    path = tmp_path / "lig.sdf"
    path.write_text(_molblock_without_h(smiles) + "$$$$\n")
    with pytest.raises(Exception):  # what RDKit alone makes of the file
        Chem.SanitizeMol(Chem.MolFromMolFile(str(path), sanitize=False))
    mol = load_ligand(path)
    repaired = Chem.MolFromSmiles(Chem.MolToSmiles(mol))
    assert repaired.GetNumAtoms() == Chem.MolFromSmiles(smiles).GetNumAtoms()
    assert sum(a.GetTotalNumHs() for a in repaired.GetAtoms() if a.GetSymbol() == "N") == added  # a tautomer of it
    assert "H added to aromatic N" in mol.GetProp(REPAIRS_PROP)
    given = Chem.MolFromMolFile(str(path), sanitize=False).GetConformer().GetPositions()
    assert np.allclose(ligand_coords(mol), given)


def test_four_bonded_neutral_nitrogen_gets_its_charge_and_clean_files_no_repair(tmp_path):
    path = tmp_path / "lig.sdf"
    block = Chem.MolToMolBlock(Chem.MolFromSmiles("C[N+](C)(C)CCO"))  # then the charge is taken out of it
    path.write_text(block.replace("  1  0  0  0  0  0", "  0  0  0  0  0  0").replace("M  CHG  1   2   1\n", ""))
    mol = load_ligand(path)
    assert Chem.MolToSmiles(mol) == "C[N+](C)(C)CCO" and "charge +1" in mol.GetProp(REPAIRS_PROP)
    assert not load_ligand("Cc1ccc2[nH]ccc2c1").HasProp(REPAIRS_PROP)


@pytest.mark.parametrize("smiles", ["OC(=O)/C=C\\c1ccc(O)cc1", "OC(=O)/C=C/c1ccc(O)cc1", "Br/C(CO)=C/CC",
                                    "O/N=C\\c1ccccc1", "C/C=C\\C=C/C", "C/C=C/[C@H](O)[C@@H](C)C(=O)Nc1ccccc1"])
def test_stereo_of_a_smiles_or_a_2d_drawing_is_docked_as_written(tmp_path, smiles):
    """The unsanitized parse left `/C=C\\` and a drawing's double-bond geometry unread: Z came back E (or the
    reverse) under a "stereo not specified" note, and a .smi of an E/Z pair was docked once."""
    from rdkit.Chem import rdDepictor

    want = Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    drawing = Chem.MolFromSmiles(smiles)
    rdDepictor.Compute2DCoords(drawing)
    Chem.MolToMolFile(drawing, str(tmp_path / "drawn.sdf"))
    for spec in (smiles, tmp_path / "drawn.sdf"):
        mol = load_ligand(str(spec))
        assert Chem.MolToSmiles(mol) == want and ligand_repairs(mol) is None, spec
        embedded = pose_mol(mol, ligand.generate_conformers(mol, 1, seed=0)[0])
        Chem.AssignStereochemistryFrom3D(embedded)
        assert Chem.MolToSmiles(embedded) == want  # the conformers docking starts from are of that isomer
    either = Chem.MolFromSmiles("CC=C[C@@H](C)N")  # a drawing whose double bond is marked "either" (stereo 3)
    rdDepictor.Compute2DCoords(either)
    either.GetBondBetweenAtoms(1, 2).SetStereo(Chem.BondStereo.STEREOANY)
    Chem.MolToMolFile(either, str(tmp_path / "either.sdf"))
    assert "stereo not specified (double bond at atom 2)" in ligand_repairs(load_ligand(tmp_path / "either.sdf"))
    (tmp_path / "pair.smi").write_text("OC(=O)/C=C\\c1ccccc1 Z\nOC(=O)/C=C/c1ccccc1 E\n")
    z, e = load_ligands(tmp_path / "pair.smi")
    assert ligand_smiles(z.mol) != ligand_smiles(e.mol)


def _h_after_each_atom(mol: Chem.Mol) -> list[int]:
    """An atom order listing each heavy atom's hydrogens right after it (as Open Babel and Maestro write files)."""
    order = []
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() > 1:
            order += [atom.GetIdx()] + [n.GetIdx() for n in atom.GetNeighbors() if n.GetAtomicNum() == 1]
    return order


def test_written_poses_list_the_atoms_in_the_input_files_order(tmp_path):
    """A file listing each atom's H after it came back heavy atoms first, then H: a pose no longer paired atom by atom
    with its input (gnina and Vina keep the input's order)."""
    mol = Chem.AddHs(Chem.MolFromSmiles("[2H]C([2H])C(=O)NCO"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    interleaved = Chem.RenumberAtoms(mol, _h_after_each_atom(mol))
    interleaved.SetProp("_Name", "probe")
    interleaved.SetProp("IC50", "3 nM")
    with Chem.SDWriter(str(tmp_path / "in.sdf")) as w:
        w.write(interleaved)
    heavy = load_ligand(tmp_path / "in.sdf")
    out = pose_mol(heavy, ligand.generate_conformers(heavy, 1, seed=0)[0], {"score": -1.0}, hydrogens=True)

    def atoms(m):
        return [(a.GetSymbol(), a.GetIsotope(), sorted(n.GetIdx() for n in a.GetNeighbors())) for a in m.GetAtoms()]
    assert atoms(out) == atoms(interleaved)
    assert out.GetProp("_Name") == "probe" and out.GetProp("IC50") == "3 nM"
    # polar H only in the file: its atoms in its order, the other H after them
    polar = Chem.RWMol(interleaved)
    for idx in sorted((a.GetIdx() for a in polar.GetAtoms() if a.GetAtomicNum() == 1
                       and a.GetNeighbors()[0].GetSymbol() == "C"), reverse=True):
        polar.RemoveAtom(idx)
    Chem.MolToMolFile(polar, str(tmp_path / "polar.sdf"))
    heavy = load_ligand(tmp_path / "polar.sdf")
    out = pose_mol(heavy, ligand.generate_conformers(heavy, 1, seed=0)[0], hydrogens=True)
    n = polar.GetNumAtoms()
    listed = [(sym, iso, [j for j in nbrs if j < n]) for sym, iso, nbrs in atoms(out)[:n]]
    assert listed == atoms(polar) and all(a.GetAtomicNum() == 1 for a in list(out.GetAtoms())[n:])


def test_a_centre_its_3d_coordinates_leave_open_is_one_isomer_in_every_conformer(tmp_path):
    """1nen's ligand: a stereocentre on near-flat crystal geometry loaded unassigned, and ETKDG built S, S, R, S: the
    ranked poses alternated enantiomers without a note. Now one isomer, named; an azide (nothing to choose) no note."""
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](O)CC"))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    mol = Chem.RemoveHs(mol)
    conf = mol.GetConformer()
    conf.SetAtomPosition(1, conf.GetPositions()[[0, 2, 3]].mean(0).tolist())  # the centre flat among its neighbours
    Chem.MolToMolFile(mol, str(tmp_path / "flat.sdf"))
    loaded = load_ligand(tmp_path / "flat.sdf")
    assert "stereo not specified (atom 2)" in ligand_repairs(loaded)
    isomers = set()
    for xyz in ligand.generate_conformers(loaded, 6, seed=0):
        embedded = pose_mol(loaded, xyz)
        Chem.AssignStereochemistryFrom3D(embedded)
        isomers.add(Chem.MolToSmiles(embedded))
    assert isomers == {ligand_smiles(loaded)}
    assert ligand_repairs(load_ligand("CN=[N+]=[N-]")) is None
    # the note numbers atoms as the file does: each atom's H listed after it (the flat centre's own H left implicit)
    withh = Chem.RWMol(Chem.AddHs(mol, addCoords=True))
    withh.RemoveAtom([n.GetIdx() for n in withh.GetAtomWithIdx(1).GetNeighbors() if n.GetAtomicNum() == 1][0])
    order = _h_after_each_atom(withh)
    Chem.MolToMolFile(Chem.RenumberAtoms(withh.GetMol(), order), str(tmp_path / "interleaved.sdf"))
    centre = order.index(1) + 1  # file atom 5: C1, its 3 H, then the centre
    assert f"stereo not specified (atom {centre})" in ligand_repairs(load_ligand(tmp_path / "interleaved.sdf"))


def test_stereo_that_places_no_heavy_atom_gets_no_note():
    """ATP's inner phosphorus (O= against OH) and an amidine's C=NH were named as unspecified stereo: chemists give
    neither (ionisation and resonance exchange the oxygens; E/Z of =NH places an H), and the heavy atoms are the same.
    They are fixed to one isomer, silently; a sulfoxide and an oxime are real stereo and are still named."""
    atp = "Nc1ncnc2c1ncn2[C@@H]1O[C@H](COP(=O)(O)OP(=O)(O)OP(=O)(O)O)[C@@H](O)[C@H]1O"
    for smiles in (atp, "NC(=N)NCCC", "N=C(N)c1ccc(C)cc1C"):
        loaded = load_ligand(smiles)
        assert ligand_repairs(loaded) is None, smiles
        isomers = set()
        for xyz in ligand.generate_conformers(loaded, 3, seed=0):  # still one isomer in every conformer
            embedded = pose_mol(loaded, xyz)
            Chem.AssignStereochemistryFrom3D(embedded)
            isomers.add(Chem.MolToSmiles(embedded))
        assert isomers == {ligand_smiles(loaded)}, smiles
    assert "stereo not specified (atom 2)" in ligand_repairs(load_ligand("CS(=O)CC"))
    assert "stereo not specified (double bond at atom 2)" in ligand_repairs(load_ligand("CC(=NO)c1ccccc1"))


def test_a_metal_complex_written_as_ions_is_refused_and_a_salts_cation_dropped():
    with pytest.raises(UserError, match="metal complex written as separate ions \\(Pt"):
        load_ligand("[NH3].[NH3].[Cl-].[Cl-].[Pt+2]")  # its largest fragment: an ammonia
    with pytest.raises(UserError, match="\\(Fe"):
        load_ligand("c1cc[cH-]c1.c1cc[cH-]c1.[Fe+2]")  # ferrocene: a cyclopentadienyl docked alone
    assert "dropped [Na+]" in ligand_repairs(load_ligand("CC(=O)[O-].[Na+]"))
    # a drug's transition-metal salt docks its organic ion; a dummy atom is no metal
    assert "dropped [Fe+2]" in ligand_repairs(load_ligand("OC(=O)/C=C/C(=O)[O-].[Fe+2]"))
    assert "dropped *" in ligand_repairs(load_ligand("OC(=O)Cc1ccccc1.[*]"))


def _closest_nonbonded_hydrogens(mol: Chem.Mol) -> float:
    xyz, topo = mol.GetConformer().GetPositions(), Chem.GetDistanceMatrix(mol)
    h = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() == 1]
    return min(np.linalg.norm(xyz[i] - xyz[j]) for i in h for j in h if i < j and topo[i, j] > 3)


def test_written_poses_keep_isotopes_and_title_and_relax_their_hydrogens(tmp_path):
    """Deuterium came back as 1H; H placed on docked heavy atoms without relaxation collided (1.05 A; PoseBusters'
    internal energy failed); a docked pose inherited the input's pose tags (inter, gnina's minimizedAffinity)."""
    mol = Chem.AddHs(Chem.MolFromSmiles("[2H]C([2H])([2H])Oc1ccc([13CH2]C(N)=O)cc1"))
    AllChem.EmbedMolecule(mol, randomSeed=42)
    mol.SetProp("_Name", "d3-probe")
    for key, value in (("minimizedAffinity", "-9.99"), ("inter", "-10.7"), ("IC50", "12 nM")):
        mol.SetProp(key, value)
    with Chem.SDWriter(str(tmp_path / "in.sdf")) as w:
        w.write(mol)
    heavy = load_ligand(tmp_path / "in.sdf")
    assert ligand_smiles(heavy) == Chem.MolToSmiles(Chem.RemoveHs(mol))  # [2H] and [13CH2] both
    out = pose_mol(heavy, ligand_coords(heavy), {"score": -7.0}, name="d3-probe", hydrogens=True,
                      drop=POSE_TAGS)
    assert sum(a.GetIsotope() == 2 for a in out.GetAtoms()) == 3 and out.GetNumAtoms() == mol.GetNumAtoms()
    props = out.GetPropsAsDict()
    assert out.GetProp("_Name") == "d3-probe" and props["IC50"] == "12 nM" and out.GetProp("score") == "-7.0000"
    assert "minimizedAffinity" not in props and "inter" not in props
    receptor = load_receptor(EXAMPLES / "1s3v" / "1s3v_protein.pdb.gz")
    records = [ln for ln in complex_pdb(receptor, out).splitlines() if ln.startswith("HETATM") and "LIG" in ln]
    assert [ln[76:78] for ln in records].count(" D") == 3  # the complex's PDB says D too (RDKit writes H)

    flexible = load_ligand("C/C=C/[C@H](O)[C@@H](C)C(=O)Nc1ccccc1")
    flexible.SetIntProp(INPUT_H_PROP, 22)  # as if its file carried hydrogens
    poses = ligand.generate_conformers(flexible, 30, seed=0, optimize=False)  # heavy-atom geometry, as docked
    placed = [Chem.AddHs(pose_mol(flexible, xyz), addCoords=True) for xyz in poses]
    assert min(map(_closest_nonbonded_hydrogens, placed)) < 1.4  # where the hydrogens alone would collide...
    for xyz in poses:
        out = pose_mol(flexible, xyz, hydrogens=True)
        assert _closest_nonbonded_hydrogens(out) > 1.8  # ...they are relaxed apart
        assert np.allclose(out.GetConformer().GetPositions()[:len(xyz)], xyz, atol=1e-4)  # the pose itself unmoved


def test_symmetric_rmsd_searches_every_match_of_a_very_symmetric_ligand():
    """Inositol hexakisphosphate: RDKit counts its six phosphates' terminal oxygens as interchangeable, ~5.6e5
    matches; a cap of 1e4 missed the best (5.0 A for 2.6 A on 6a73): the RMSD is CalcRMS's own, as PoseBusters'."""
    from rdkit.Chem import rdMolAlign
    from scipy.spatial.transform import Rotation

    phosphate = "OP(=O)(O)O"
    phytate = Chem.AddHs(Chem.MolFromSmiles(f"{phosphate}C1C({phosphate})C({phosphate})C({phosphate})C({phosphate})"
                                            f"C1{phosphate}"))
    AllChem.EmbedMolecule(phytate, randomSeed=7)
    mol = Chem.RemoveHs(phytate)
    ref = mol.GetConformer().GetPositions()
    turned = (ref - ref.mean(0)) @ Rotation.random(random_state=0).as_matrix().T + ref.mean(0)
    ours = ligand.symmetric_rmsd(mol, turned, ref)
    a, b = pose_mol(mol, turned), pose_mol(mol, ref)
    assert ours == pytest.approx(rdMolAlign.CalcRMS(a, b), abs=1e-6)
    assert ours < rdMolAlign.CalcRMS(a, b, maxMatches=10000) - 0.2  # what the capped search gave (4.14 A for 3.82)


@pytest.mark.parametrize("smiles, n_rot", [
    ("CCO", 0.5), ("OCC(O)CO", 3.5), ("CCS", 0.5), ("CCN", 0.5), ("CC(N)=O", 0.0), ("CC(=N)N", 0.0),
    ("COc1ccccc1", 1.0), ("Oc1ccccc1", 0.5), ("OP(=O)(O)O", 1.5)])
def test_vina_rotor_count_halves_terminal_polar_hydrogen_rotors(smiles, n_rot):
    # Vina's N_rot (meeko's torsion tree, 0.5 per torsion end with one heavy neighbour): the searched torsions count
    # 1, a hydroxyl, thiol or amine 0.5, an amide's or amidine's NH2 nothing (planar); checked against Vina 1.2.7 on
    # 31 validation ligands. The reported score divided by the searched torsions alone (glycerol: 2 for 3.5)
    from sciddiff.dock.ligand import polar_hydrogen_rotors

    mol = Chem.MolFromSmiles(smiles)
    assert len(ligand.rotatable_torsions(mol).bonds) + 0.5 * polar_hydrogen_rotors(mol) == n_rot
    assert polar_hydrogen_rotors(Chem.AddHs(mol)) == polar_hydrogen_rotors(mol)  # explicit hydrogens alike
