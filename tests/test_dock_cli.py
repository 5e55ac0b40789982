"""`sciddiff dock` / `sciddiff dock-eval` end to end on the example complexes, and the user-error paths."""
import gzip
import json
import shutil
import subprocess
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from sciddiff.cli import UserError, main

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
PROTEIN = str(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
LIGAND = str(EXAMPLES / "1uou" / "1uou_ligand.sdf")
FAST = ["--samples", "2", "--steps", "3", "--random-starts", "6", "--mc-rounds", "2", "--poses", "3"]


def _dock(tmp_path, name, *extra):
    out = tmp_path / name
    code = main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", LIGAND, "--out", str(out),
                 *FAST, *extra])
    return code, out


def test_dock_writes_ranked_poses(tmp_path):
    code, out = _dock(tmp_path, "run", "--rescore", "none")  # energy ranking: energies ascend
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["complex_rank1.pdb", "poses.sdf", "rank1.sdf", "rank2.sdf",
                                                     "rank3.sdf", "summary.json"]
    assert (out / "poses.sdf").read_text() == "".join((out / f"rank{i}.sdf").read_text() for i in (1, 2, 3))
    ref = Chem.MolFromMolFile(LIGAND)
    scores = []
    for i in (1, 2, 3):
        mol = next(Chem.SDMolSupplier(str(out / f"rank{i}.sdf")))  # sanitizes: a valid molecule
        assert mol is not None and mol.GetNumAtoms() == ref.GetNumAtoms()
        assert int(mol.GetProp("rank")) == i and 0 <= float(mol.GetProp("confidence")) <= 1
        scores.append(float(mol.GetProp("energy")))
        assert Chem.MolToInchiKey(mol) == Chem.MolToInchiKey(ref)
    assert scores == sorted(scores)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 0 and len(summary["poses"]) == 3 and summary["mode"] == "box"
    assert summary["settings"]["ranking"] == "energy"  # as used: recorded "learned" without a rescorer before
    assert summary["waters"] == "receptor atoms"
    assert summary["confidence"].startswith("search consensus")
    assert {"total", "search", "grid"} <= summary["timings"].keys() and "sha256:" in summary["model_version"]
    pdb = (out / "complex_rank1.pdb").read_text()
    assert pdb.count("LIG L") == ref.GetNumAtoms() and "ATOM" in pdb
    # poses stay in the box (crystal ligand + 4 A, plus the grid margin)
    box_lo = ref.GetConformer().GetPositions().min(0) - 6
    assert np.all(Chem.MolFromMolFile(str(out / "rank1.sdf")).GetConformer().GetPositions() > box_lo)


@pytest.mark.parametrize("ranking", ["energy", "learned"])
def test_default_confidence_is_the_learned_probability(tmp_path, ranking):
    code, out = _dock(tmp_path, ranking, "--model", "none", "--ranking", ranking)
    summary = json.loads((out / "summary.json").read_text())
    # the rescorer named also where it only gives the confidence: a --resume with another one docks again
    named = summary["ranking"] if ranking == "learned" else summary["confidence"]
    assert code == 0 and summary["confidence"].startswith("learned P(RMSD < 2 A)") and "rescore.pt" in named
    assert summary["ranking"].startswith("learned" if ranking == "learned" else "vina energy")
    conf = [p["confidence"] for p in summary["poses"]]
    energy = [p["energy"] for p in summary["poses"]]
    assert all(0 < c < 1 for c in conf) and all(0 <= p["consensus"] <= 1 for p in summary["poses"])
    if ranking == "energy":
        assert energy == sorted(energy)


@pytest.mark.parametrize("model", ["none", "shipped"])
def test_same_seed_same_poses(tmp_path, model):
    # at any thread count (the default follows the machine's load): torch's fused SiLU made the score network's last
    # bits, and so the poses, depend on it
    extra = ["--model", "none"] if model == "none" else []
    _, a = _dock(tmp_path, "a", "--seed", "5", "--threads", "1", *extra)
    _, b = _dock(tmp_path, "b", "--seed", "5", "--threads", "2", *extra)
    assert (a / "poses.sdf").read_text() == (b / "poses.sdf").read_text()
    assert [json.loads((out / "summary.json").read_text())["threads"] for out in (a, b)] == [1, 2]


def test_the_same_molecule_docks_alike_in_any_atom_order_or_format(tmp_path):
    """Conformer seeds, torsion conventions and random streams follow atom order: docking the canonical molecule
    makes a permuted SDF and a SMILES of the ligand give the input's poses (each in its own atom order)."""
    from sciddiff.dock.ligand import symmetric_rmsd

    mol = Chem.MolFromMolFile(LIGAND)
    perm = np.random.default_rng(3).permutation(mol.GetNumAtoms()).tolist()
    Chem.MolToMolFile(Chem.RenumberAtoms(mol, perm), str(tmp_path / "permuted.sdf"))
    runs = {}
    for name, ligand in [("sdf", LIGAND), ("permuted", str(tmp_path / "permuted.sdf")),
                         ("smiles", Chem.MolToSmiles(mol))]:
        out = tmp_path / name
        assert main(["dock", "--protein", PROTEIN, "--ligand", ligand, "--autobox-ligand", LIGAND, "--out", str(out),
                     "--model", "none", *FAST]) == 0
        poses = Chem.SDMolSupplier(str(out / "rank1.sdf"))[0]
        runs[name] = (json.loads((out / "summary.json").read_text())["poses"], Chem.RemoveHs(poses))
    ref_poses, ref = runs["sdf"]
    for name in ("permuted", "smiles"):
        poses, mol_k = runs[name]
        assert [p["score"] for p in poses] == [p["score"] for p in ref_poses], name
        # the same heavy atoms in another order: symmetry-corrected RMSD between the two files' rank 1
        match = mol_k.GetSubstructMatch(ref)
        x = mol_k.GetConformer().GetPositions()[list(match)]
        assert symmetric_rmsd(ref, x, ref.GetConformer().GetPositions()) < 1e-3, name


BAD = [
    (["--ligand", "missing.sdf"], "not found"),
    (["--ligand", "C1CC"], "cannot parse"),                  # unclosed ring: SMILES that does not parse
    (["--ligand", "c1cccc1"], "sanitization"),               # kekulization fails
    (["--ligand", "[H][H]"], "no heavy atoms"),
    (["--protein", LIGAND], "must be a .pdb"),
    (["--center", "0", "0", "0"], "go together"),
    (["--center", "500", "500", "500", "--size", "10", "10", "10"], "no protein atoms"),
    (["--autobox-ligand", LIGAND, "--center", "0", "0", "0", "--size", "5", "5", "5"], "not both"),
    (["--center", "0", "0", "0", "--size", "-1", "5", "5"], "positive"),
    (["--center", "nan", "0", "0", "--size", "10", "10", "10"], "finite"),
    (["--autobox-ligand", LIGAND, "--autobox-add", "nan"], "--autobox-add must be"),
    (["--autobox-ligand", LIGAND, "--autobox-add", "-1"], "--autobox-add must be"),
]


@pytest.mark.parametrize("override,message", BAD)
def test_bad_input_one_line_exit_2_no_output(tmp_path, capsys, override, message):
    args = {"--protein": PROTEIN, "--ligand": LIGAND}
    rest = []
    i = 0
    while i < len(override):
        if override[i] in args:
            args[override[i]] = override[i + 1]
            i += 2
        else:
            rest.append(override[i])
            i += 1
    out = tmp_path / "out"
    code = main(["dock", *sum(([k, v] for k, v in args.items()), []), "--out", str(out), *FAST, *rest])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_protein_without_residues(tmp_path, capsys):
    pdb = tmp_path / "ions.pdb"
    pdb.write_text("HETATM    1 ZN    ZN A   1      10.000  10.000  10.000  1.00  0.00          ZN\nEND\n")
    code = main(["dock", "--protein", str(pdb), "--ligand", LIGAND, "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and "no amino-acid residues" in capsys.readouterr().err


def test_too_large_ligand(tmp_path, capsys):
    code = main(["dock", "--protein", PROTEIN, "--ligand", "C" * 160, "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and "limit" in capsys.readouterr().err


def test_batch_skips_failing_rows(tmp_path, capsys):
    table = tmp_path / "table.csv"
    shutil.copy(LIGAND, tmp_path / "lig.sdf")
    shutil.copy(PROTEIN, tmp_path / "rec.pdb.gz")
    table.write_text("protein,ligand,name\nrec.pdb.gz,lig.sdf,good\nrec.pdb.gz,nothere.sdf,bad\n")
    code = main(["dock", "--batch", str(table), "--autobox-ligand", LIGAND, "--out", str(tmp_path / "o"), *FAST,
                 "--model", "none"])
    captured = capsys.readouterr()
    assert code == 1 and "bad: skipped" in captured.err
    assert (tmp_path / "o" / "good" / "rank1.sdf").exists() and not (tmp_path / "o" / "bad").exists()


def test_batch_overwrite_never_deletes_a_rows_input_and_resume_deletes_nothing(tmp_path, capsys):
    shutil.copy(PROTEIN, tmp_path / "rec.pdb.gz")
    out, table = tmp_path / "o", tmp_path / "table.csv"
    table.write_text("protein,ligand,name\nrec.pdb.gz,CCO,first\n")
    run = ["dock", "--batch", str(table), "--autobox-ligand", LIGAND, "--out", str(out), *FAST, "--model", "none"]
    assert main(run) == 0
    # re-dock a pose of the earlier run: --overwrite would delete it before reading it
    table.write_text("protein,ligand,name\nrec.pdb.gz,o/first/rank1.sdf,again\n")
    assert main(run + ["--overwrite"]) == 2
    assert "holds the input" in capsys.readouterr().err and (out / "first" / "rank1.sdf").is_file()
    # a table kept beside its results: --resume deletes no input, so it is not refused
    shutil.copy(table, out / "table.csv")
    (out / "table.csv").write_text("protein,ligand,name\n../rec.pdb.gz,CCO,first\n")
    assert main(["dock", "--batch", str(out / "table.csv"), *run[3:], "--resume"]) == 0
    assert "first: kept from the earlier run" in capsys.readouterr().err and (out / "table.csv").is_file()


def test_a_library_docks_each_molecule_as_alone_and_ranks_them(tmp_path, capsys):
    import csv

    from rdkit.Chem import AllChem

    records = []
    for smiles, name in [("OC(=O)c1ccccc1O", "salicylic acid"), ("CC(=O)Nc1ccc(O)cc1", "")]:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=0)
        mol.SetProp("_Name", name)
        records.append(Chem.MolToMolBlock(mol) + "$$$$\n")
    records.insert(1, "broken\n\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nnonsense\n$$$$\n")
    library = tmp_path / "lib.sdf"
    library.write_text("".join(records))
    box = ["--autobox-ligand", LIGAND, *FAST, "--model", "none", "--seed", "3"]
    code = main(["dock", "--protein", PROTEIN, "--ligand", str(library), "--out", str(tmp_path / "screen"), *box])
    assert code == 1 and "lib_2: skipped: cannot parse ligand" in capsys.readouterr().err  # the run goes on
    screen = tmp_path / "screen"
    assert sorted(p.name for p in screen.iterdir()) == ["1_salicylic_acid", "3_lib_3", "best_poses.sdf", "results.csv"]
    rows = list(csv.DictReader((screen / "results.csv").open()))
    assert [r["folder"] for r in rows[:2]] == sorted(["1_salicylic_acid", "3_lib_3"],
                                                     key=lambda f: float(json.loads((screen / f / "summary.json").read_text())["poses"][0]["score"]))
    assert rows[2]["name"] == "lib_2" and rows[2]["error"] and rows[2]["score"] == rows[2]["folder"] == ""
    assert float(rows[0]["ligand_efficiency"]) == pytest.approx(-float(rows[0]["score"]) / int(rows[0]["heavy_atoms"]),
                                                               abs=1e-4)
    best = [m for m in Chem.SDMolSupplier(str(screen / "best_poses.sdf"))]
    assert [float(m.GetProp("score")) for m in best] == [float(r["score"]) for r in rows[:2]]
    # a molecule of the library gets the poses it gets alone (same seed)
    (tmp_path / "alone.smi").write_text("CC(=O)Nc1ccc(O)cc1\n")
    assert main(["dock", "--protein", PROTEIN, "--ligand", str(tmp_path / "alone.smi"), "--out", str(tmp_path / "a"),
                 *box]) == 0
    coords = lambda f: Chem.MolFromMolFile(str(f)).GetConformer().GetPositions()  # noqa: E731
    assert np.allclose(coords(screen / "3_lib_3" / "rank1.sdf"), coords(tmp_path / "a" / "rank1.sdf"), atol=1e-3)
    # an interrupted screen continues: what was docked with the same settings is kept, the rest is docked
    results = (screen / "results.csv").read_text()
    shutil.rmtree(screen / "3_lib_3")
    run = ["dock", "--protein", PROTEIN, "--ligand", str(library), "--out", str(screen), *box]
    assert main(run) == 2 and "--resume" in capsys.readouterr().err  # the folder exists
    assert main([*run, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "salicylic acid: kept from the earlier run" in err and "lib_3: rank 1 score" in err
    strip = lambda text: [ln.rsplit(",", 4)[0] for ln in text.splitlines()]  # noqa: E731  (seconds differ)
    assert strip((screen / "results.csv").read_text()) == strip(results)
    # another box (or receptor) is not how these were docked: docked again
    assert main([*run, "--resume", "--autobox-add", "5"]) == 1
    assert "kept from the earlier run" not in capsys.readouterr().err
    # another library does not continue this screen; --overwrite replaces the screen as a whole
    (tmp_path / "other.smi").write_text("CCO ethanol\nCCN ethylamine\n")
    other = ["dock", "--protein", PROTEIN, "--ligand", str(tmp_path / "other.smi"), "--out", str(screen), *box]
    assert main([*other, "--resume"]) == 2 and "other molecules" in capsys.readouterr().err
    assert main([*other, "--overwrite"]) == 0
    assert sorted(p.name for p in screen.iterdir()) == ["1_ethanol", "2_ethylamine", "best_poses.sdf", "results.csv"]


def test_a_molecule_that_fails_to_dock_does_not_stop_the_screen(tmp_path, capsys, monkeypatch):
    from sciddiff.dock import docking

    real_dock = docking.dock

    def dock(receptor, mol, *args, **kwargs):
        if mol.GetNumAtoms() == 2:
            raise docking.UserError("cannot generate a 3D conformer for the ligand: test")
        return real_dock(receptor, mol, *args, **kwargs)

    monkeypatch.setattr(docking, "dock", dock)
    (tmp_path / "two.smi").write_text("CC ethane\nCCO ethanol\n")
    code = main(["dock", "--protein", PROTEIN, "--ligand", str(tmp_path / "two.smi"), "--autobox-ligand", LIGAND,
                 "--out", str(tmp_path / "o"), *FAST, "--model", "none"])
    assert code == 1 and "ethane: skipped: cannot generate" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["2_ethanol", "best_poses.sdf", "results.csv"]


def test_a_batch_row_with_a_library_is_skipped_with_the_way_to_screen_it(tmp_path, capsys):
    (tmp_path / "two.smi").write_text("CCO ethanol\nCCN ethylamine\n")
    shutil.copy(PROTEIN, tmp_path / "rec.pdb.gz")
    table = tmp_path / "table.csv"
    table.write_text("protein,ligand,name\nrec.pdb.gz,two.smi,lib\nrec.pdb.gz,CCO,one\n")
    code = main(["dock", "--batch", str(table), "--autobox-ligand", LIGAND, "--out", str(tmp_path / "o"), *FAST,
                 "--model", "none"])
    assert code == 1 and "holds 2 molecules" in capsys.readouterr().err
    assert (tmp_path / "o" / "results.csv").read_text().splitlines()[1].startswith("one,one,")


def test_conformers_of_one_ligand_are_docked_once(tmp_path, capsys):
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("OC(=O)c1ccccc1O"))
    AllChem.EmbedMultipleConfs(mol, 3, randomSeed=0)
    with Chem.SDWriter(str(tmp_path / "confs.sdf")) as writer:
        for conf in mol.GetConformers():
            writer.write(mol, confId=conf.GetId())
    code = main(["dock", "--protein", PROTEIN, "--ligand", str(tmp_path / "confs.sdf"), "--autobox-ligand", LIGAND,
                 "--out", str(tmp_path / "o"), *FAST, "--model", "none"])
    assert code == 0 and "3 records of the same molecule, docked once" in capsys.readouterr().err
    assert (tmp_path / "o" / "rank1.sdf").exists() and not (tmp_path / "o" / "results.csv").exists()


def test_out_under_a_file_is_one_line_error(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", LIGAND,
                 "--out", str(tmp_path / "afile" / "run"), *FAST, "--model", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot be written" in err and len(err.splitlines()) == 1


def test_nmr_models_keep_the_first(tmp_path):
    from sciddiff.dock.receptor import load_receptor

    atoms = ["ATOM      1  N   ALA A   1       0.000   0.000   0.000  1.00  0.00           N",
             "ATOM      2  CA  ALA A   1       1.458   0.000   0.000  1.00  0.00           C",
             "ATOM      3  C   ALA A   1       2.009   1.420   0.000  1.00  0.00           C"]
    shifted = [ln[:30] + f"{float(ln[30:38]) + 1:8.3f}" + ln[38:] for ln in atoms]
    pdb = tmp_path / "nmr.pdb"
    pdb.write_text("MODEL        1\n" + "\n".join(atoms) + "\nENDMDL\nMODEL        2\n" + "\n".join(shifted) + "\nENDMDL\nEND\n")
    rec = load_receptor(pdb)
    assert len(rec.coords) == 3 and rec.coords[0, 0] == 0.0
    assert rec.pdb_text.count("ATOM") == 3  # the complex output holds one copy of the protein


def test_waters_are_receptor_atoms_unless_dropped(tmp_path):
    from sciddiff.dock.receptor import load_receptor
    from sciddiff.dock.scoring import receptor_types

    atoms = ["ATOM      1  N   ALA A   1       0.000   0.000   0.000  1.00  0.00           N",
             "ATOM      2  CA  ALA A   1       1.458   0.000   0.000  1.00  0.00           C",
             "ATOM      3  C   ALA A   1       2.009   1.420   0.000  1.00  0.00           C",
             "ATOM      4  O   ALA A   1       1.251   2.390   0.000  1.00  0.00           O",
             "HETATM    5  O   HOH A 101       5.000   5.000   5.000  1.00  0.00           O"]
    pdb = tmp_path / "wet.pdb"
    pdb.write_text("\n".join(atoms) + "\nEND\n")
    wet, dry = load_receptor(pdb), load_receptor(pdb, keep_waters=False)
    assert len(wet.coords) == 5 and len(dry.coords) == 4
    types = receptor_types(wet)
    assert types.donor[4] and types.acceptor[4]  # a water's O gives and takes H-bonds
    assert not types.donor[3] and types.acceptor[3]  # the backbone O only takes them


def test_a_protein_file_holding_the_ligand_itself_scores_as_without_it(tmp_path, capsys):
    """A structure from the PDB with its ligand left in: that residue is the docked ligand (same heavy atoms), so
    it is left out of the receptor with a note; a cofactor of other atoms stays."""
    from sciddiff.dock.box import Box, box_around
    from sciddiff.dock.ligand_io import ligand_coords
    from sciddiff.dock.receptor import load_receptor, without_ligand_itself

    lig = Chem.MolFromMolFile(LIGAND)
    het = [ln.replace("UNL", "LIG") for ln in Chem.MolToPDBBlock(lig, flavor=4).splitlines() if ln.startswith("HETATM")]
    raw = _write_protein(tmp_path / "raw.pdb", lambda lines: [ln for ln in lines if not ln.startswith("END")] + het)
    clean, held = load_receptor(PROTEIN), load_receptor(raw)
    assert len(held.coords) == len(clean.coords) + lig.GetNumAtoms()
    trimmed, removed = without_ligand_itself(held, lig)
    assert removed == ["LIG 1"] and len(trimmed.coords) == len(clean.coords) and "LIG" not in trimmed.pdb_text
    assert np.array_equal(trimmed.coords, clean.coords) and len(trimmed.hydrogens) == len(trimmed.coords)
    other = Chem.RWMol(lig)
    other.RemoveAtom(other.GetNumAtoms() - 1)
    assert without_ligand_itself(held, other.GetMol())[1] == []  # not the same molecule: a cofactor, kept
    # a box elsewhere: a molecule of the same heavy atoms outside it is another molecule (an isomer), kept
    far = Box(center=ligand_coords(lig).mean(0) + 30.0, size=np.full(3, 20.0, np.float32))
    assert without_ligand_itself(held, lig, far)[1] == [] and without_ligand_itself(held, lig, box_around(
        ligand_coords(lig)))[1] == ["LIG 1"]

    scores = []
    for protein in (PROTEIN, raw):
        capsys.readouterr()
        assert main(["dock-score", "--protein", protein, "--ligand", LIGAND]) == 0
        out = capsys.readouterr()
        scores.append(out.out.splitlines()[1].split()[1])
    assert scores[0] == scores[1] and "LIG 1 is the ligand itself" in out.err


def test_posebusters_judges_a_pose_against_the_receptor_docked_against(tmp_path):
    """The crystal pose passes against the receptor without the file's copy of the ligand (posebusters counted it as
    an overlapping cofactor: dock-eval called every such pose invalid), and against an mmCIF receptor given as PDB
    records (posebusters reads no mmCIF: every pose was invalid). No capsys here: posebusters points RDKit's log
    handler at the sys.stderr of the moment, and a capsys stream closes with its test."""
    from Bio.PDB import MMCIFIO, PDBParser

    from sciddiff.dock.evaluate import posebusters_valid
    from sciddiff.dock.ligand_io import ligand_coords, load_ligand, pose_mol
    from sciddiff.dock.receptor import load_receptor, without_ligand_itself

    lig = Chem.MolFromMolFile(LIGAND)
    het = [ln.replace("UNL", "LIG") for ln in Chem.MolToPDBBlock(lig, flavor=4).splitlines() if ln.startswith("HETATM")]
    raw = _write_protein(tmp_path / "raw.pdb", lambda lines: [ln for ln in lines if not ln.startswith("END")] + het)
    crystal = load_ligand(LIGAND)
    trimmed = without_ligand_itself(load_receptor(raw), crystal)[0]
    cif = tmp_path / "raw.cif"
    writer = MMCIFIO()
    writer.set_structure(PDBParser(QUIET=True).get_structure("p", gzip.open(PROTEIN, "rt")))
    writer.save(str(cif))
    for receptor in (trimmed, load_receptor(cif)):
        assert posebusters_valid(pose_mol(crystal, ligand_coords(crystal)), crystal, receptor) == (True, "")


@pytest.mark.parametrize("fullname, resname, element", [
    ("CL1 ", "LZC", "Cl"), ("BR1 ", "LIG", "Br"), ("ZN  ", "ZN", "Zn"), ("CA  ", "CA", "Ca"), ("NA  ", "NA", "Na"),
    (" CA ", "ALA", "C"), (" NA ", "LIG", "N"), ("1HB ", "ALA", "H"), (" HG ", "SER", "H"), ("SE  ", "MSE", "Se")])
def test_elements_of_atoms_without_an_element_column_come_from_the_name_columns(fullname, resname, element):
    from sciddiff.dock.receptor import _element_from_name

    assert _element_from_name(fullname, resname) == element


def test_ions_without_an_element_column_are_their_residues_element(tmp_path):
    # biopython guesses an ion's element from its name's first letter where the name starts in column 14: " FE " in
    # FE was fluorine, " CA " carbon, " NA " nitrogen; an ion's residue is its element (as Vina's receptor preparation)
    from sciddiff.dock.receptor import load_receptor

    lines = [ln for ln in gzip.open(PROTEIN, "rt").read().splitlines() if ln.startswith("ATOM")]
    ions = [f"HETATM{9000 + k:5d} {name} {res:>3} Z{k + 1:4d}    {k * 3.0:8.3f}{80.0:8.3f}{80.0:8.3f}  1.00 20.00"
            for k, (name, res) in enumerate([(" FE ", "FE"), (" CA ", "CA"), (" NA ", "NA"), (" CL ", "CL"),
                                             ("FE  ", "FE"), (" ZN ", "ZN"), (" SOD", "SOD"), (" CLA", "CLA")])]
    ions += ["ATOM  " + ln[6:22] + f"{k + 20:4d}" + ln[26:] for k, ln in enumerate(ions[1:3])]  # as MD files do
    (tmp_path / "ions.pdb").write_text("\n".join(lines + ions) + "\nEND\n")
    rec = load_receptor(tmp_path / "ions.pdb")
    assert list(rec.elements[rec.is_hetero]) == ["Fe", "Ca", "Na", "Cl", "Fe", "Zn", "Na", "Cl", "Ca", "Na"]
    assert list(rec.elements[~rec.is_hetero]) == list(load_receptor(PROTEIN).elements[:int((~rec.is_hetero).sum())])


def test_repeated_atom_records_are_left_out_of_the_receptor_and_of_its_written_records(tmp_path, capsys):
    # two copies of a chain without chain ids: the parser keeps the first of each atom; the complex written with
    # the poses held both copies, atoms that were never scored
    from sciddiff.dock.receptor import load_receptor

    lines = [ln[:21] + " " + ln[22:] for ln in gzip.open(PROTEIN, "rt").read().splitlines() if ln.startswith("ATOM")]
    moved = [ln[:30] + f"{float(ln[30:38]) + 40:8.3f}" + ln[38:] for ln in lines]
    (tmp_path / "twice.pdb").write_text("\n".join(lines + ["TER"] + moved + ["END"]) + "\n")
    rec = load_receptor(tmp_path / "twice.pdb")
    assert "repeat an atom already read" in capsys.readouterr().err
    (tmp_path / "once.pdb").write_text("\n".join(lines + ["END"]) + "\n")
    assert len(rec.coords) == len(load_receptor(tmp_path / "once.pdb").coords)
    assert [ln for ln in rec.pdb_text.splitlines() if ln.startswith("ATOM")] == lines


def test_a_residues_alternate_locations_are_read_as_one_conformer(tmp_path):
    # conformer A holds 0.55 of most side-chain atoms but 0.45 of three: biopython's per-atom choice built the ring
    # from atoms of both conformers; one conformer is read, the one of highest summed occupancy
    from sciddiff.dock.receptor import load_receptor

    lines = [ln for ln in gzip.open(PROTEIN, "rt").read().splitlines() if ln.startswith("ATOM")]
    number = int(next(ln for ln in lines if ln[17:20] == "PHE")[22:26])
    out = []
    for ln in lines:
        if int(ln[22:26]) != number or ln[12:16].strip() in ("N", "CA", "C", "O"):
            out.append(ln)
            continue
        a = 0.45 if ln[12:16].strip() in ("CG", "CD1", "CE1") else 0.55
        moved = ln[:30] + f"{float(ln[30:38]) + 1.5:8.3f}" + ln[38:]
        out += [ln[:16] + "A" + ln[17:54] + f"{a:6.2f}" + ln[60:], moved[:16] + "B" + moved[17:54] + f"{1 - a:6.2f}" + ln[60:]]
    (tmp_path / "altloc.pdb").write_text("\n".join(out) + "\nEND\n")
    rec = load_receptor(tmp_path / "altloc.pdb")
    assert np.array_equal(rec.coords, load_receptor(PROTEIN).coords)  # every atom of conformer A
    # and the records written with the poses (complex_rank1.pdb, PoseBusters' receptor) hold that conformer only
    assert {ln[16] for ln in rec.pdb_text.splitlines() if ln.startswith("ATOM")} == {" ", "A"}


def test_raw_pdb_files_segment_ids_models_point_mutations_and_parse_errors(tmp_path, capsys):
    """What MD, assembly and crystal files carry: chains only as segment ids, several models, a residue modelled
    as two amino acids (altlocs), a broken coordinate deep in the file."""
    from sciddiff.dock.receptor import load_receptor

    lines = [ln for ln in gzip.open(PROTEIN, "rt").read().splitlines() if ln.startswith(("ATOM", "HETATM"))]
    clean = load_receptor(PROTEIN)
    half = len(lines) // 2  # two segments, residue numbers of the second restarting like the first's
    seg = [ln[:21] + " " + ln[22:72].ljust(50) + ("PA  " if k < half else "PB  ") + ln[76:]
           for k, ln in enumerate(lines)]
    seg = [ln[:22] + (f"{int(ln[22:26]) - 1000:4d}" if k >= half else ln[22:26]) + ln[26:] for k, ln in enumerate(seg)]
    (tmp_path / "seg.pdb").write_text("\n".join(seg) + "\nEND\n")
    capsys.readouterr()
    assert len(load_receptor(tmp_path / "seg.pdb").coords) == len(clean.coords)
    assert "segment ids read as chains: PA -> A, PB -> B" in capsys.readouterr().err
    (tmp_path / "models.pdb").write_text("MODEL 1\n" + "\n".join(lines) + "\nENDMDL\nMODEL 2\n" + "\n".join(lines)
                                         + "\nENDMDL\nEND\n")
    assert len(load_receptor(tmp_path / "models.pdb").coords) == len(clean.coords)
    assert "has 2 models: the first is the receptor" in capsys.readouterr().err
    res1 = [ln for ln in lines if ln[22:27] == lines[0][22:27]]  # residue 1 as GLY (occupancy 0.6) or as ALA
    mutant = [ln[:16] + alt + name + ln[20:54] + occ + ln[60:]  # (0.4, listed last: the parser's pick): GLY is read
              for alt, name, occ in (("A", "GLY", "  0.60"), ("B", "ALA", "  0.40")) for ln in res1]
    (tmp_path / "micro.pdb").write_text("\n".join(mutant + lines[len(res1):]) + "\nEND\n")
    micro = load_receptor(tmp_path / "micro.pdb")
    assert micro.res_names[0] == "GLY"
    broken = ["REMARK   1 a header line"] * 3 + lines[:10] + [lines[10][:30] + "********" + lines[10][38:]]
    (tmp_path / "broken.pdb").write_text("\n".join(broken) + "\nEND\n")
    with pytest.raises(UserError, match="line 14"):
        load_receptor(tmp_path / "broken.pdb")


def test_first_model_with_atoms_and_upper_case_gz(tmp_path):
    from sciddiff.dock.receptor import load_receptor

    body = gzip.open(PROTEIN, "rt").read()
    pdb = tmp_path / "models.PDB.GZ"
    with gzip.open(pdb, "wt") as fh:
        fh.write("MODEL        1\nENDMDL\nMODEL        2\n" + body + "ENDMDL\nEND\n")
    assert len(load_receptor(pdb).coords) == len(load_receptor(PROTEIN).coords)


def _write_protein(path: Path, edit) -> str:
    lines = gzip.open(PROTEIN, "rt").read().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")
    return str(path)


def _flat_sdf(path: Path) -> str:
    from rdkit.Chem import rdDepictor  # its own import: `Chem.rdDepictor` exists only once something imported it

    mol = Chem.MolFromMolFile(LIGAND)
    mol.RemoveAllConformers()
    rdDepictor.Compute2DCoords(mol)
    Chem.MolToMolFile(mol, str(path))
    return str(path)


@pytest.mark.parametrize("case", ["nan_atom", "stray_atom_blind", "flat_autobox", "dir_protein", "out_is_file",
                                  "all_bad_library"])
def test_more_bad_input_one_line_exit_2_no_output(tmp_path, capsys, case):
    nan = lambda lines: [ln[:30] + "     nan" + ln[38:] if i == 5 else ln for i, ln in enumerate(lines)]  # noqa: E731
    far = lambda lines: lines + ["HETATM 9999 ZN    ZN Z   1    2000.0002000.0002000.000  1.00  0.00          ZN"]  # noqa: E731
    protein, ligand, extra, message = PROTEIN, LIGAND, ["--autobox-ligand", LIGAND], {
        "nan_atom": "non-finite", "stray_atom_blind": "too large for the blind pocket search",
        "flat_autobox": "no 3D coordinates", "dir_protein": "is a folder", "out_is_file": "not a folder",
        "all_bad_library": "none of the 2 molecules"}[case]
    out = tmp_path / "out"
    if case == "nan_atom":
        protein = _write_protein(tmp_path / "nan.pdb", nan)
    elif case == "stray_atom_blind":
        protein, extra = _write_protein(tmp_path / "far.pdb", far), []
    elif case == "flat_autobox":
        extra = ["--autobox-ligand", _flat_sdf(tmp_path / "flat.sdf")]
    elif case == "dir_protein":
        (tmp_path / "rec.pdb").mkdir()
        protein = str(tmp_path / "rec.pdb")
    elif case == "out_is_file":
        out.write_text("x")
    else:
        (tmp_path / "lib.smi").write_text("C1CC( b1\nXx b2\n")
        ligand = str(tmp_path / "lib.smi")
    code = main(["dock", "--protein", protein, "--ligand", ligand, "--out", str(out), *extra, *FAST,
                 "--model", "none", "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert out.is_file() if case == "out_is_file" else not out.exists()
    assert not list(tmp_path.glob(".out*"))


def test_dropped_fragments_are_noted_and_results_are_readable_by_others(tmp_path, capsys):
    out = tmp_path / "salt"
    code = main(["dock", "--protein", PROTEIN, "--ligand", "OC(=O)c1ccccc1O.[Na+]", "--autobox-ligand", LIGAND,
                 "--out", str(out), *FAST, "--model", "none"])
    assert code == 0 and "dropped [Na+]" in capsys.readouterr().err
    assert "dropped [Na+]" in json.loads((out / "summary.json").read_text())["ligand_repairs"]
    assert "sciddiff_repairs" not in (out / "poses.sdf").read_text()  # said in the summary, not an SD tag
    assert out.stat().st_mode & 0o077 == 0o777 & ~_umask() & 0o077  # the umask's permissions, not mkdtemp's 0700


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_batch_names_that_are_not_folders_and_dock_score_paths(tmp_path, capsys):
    table = tmp_path / "table.csv"
    table.write_text(f"protein,ligand,name\n{PROTEIN},{LIGAND},a\n{PROTEIN},CCO,.\n")
    code = main(["dock", "--batch", str(table), "--autobox-ligand", LIGAND, "--out", str(tmp_path / "o"), *FAST])
    assert code == 2 and "line 3: the name '.' names no folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    same = str(tmp_path / "same.txt")
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", LIGAND, "--out", same, "--json", same]) == 2
    assert "same file" in capsys.readouterr().err
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", LIGAND, "--json", "/proc/x.json"]) == 2
    assert "--json /proc/x.json" in capsys.readouterr().err


def test_gzipped_outputs_protein_formats_in_a_data_folder_and_one_note_per_box_file(tmp_path, capsys):
    out = tmp_path / "scored.sdf.gz"  # gnina writes .sdf.gz: it was plain text under that name, unreadable here
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", LIGAND, "--out", str(out)]) == 0
    with gzip.open(out, "rt") as fh:
        assert ">  <score>  (1)" in fh.read()
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", str(out)]) == 0
    from sciddiff.dock.data import complex_files

    (tmp_path / "data" / "cx").mkdir(parents=True)  # dock-eval looked for .pdb.gz where dock reads .pdbqt.gz
    (tmp_path / "data" / "cx" / "cx_protein.pdbqt.gz").write_bytes(b"")
    assert complex_files(tmp_path / "data", "cx")[0].endswith("cx_protein.pdbqt.gz")
    two = tmp_path / "two.sdf"
    two.write_text((Path(LIGAND).read_text() + "$$$$\n") * 2)
    capsys.readouterr()
    assert main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--autobox-ligand", str(two), "--model", "none",
                 "--out", str(tmp_path / "o"), *FAST]) == 0
    assert capsys.readouterr().err.count("the box is around all 2 molecules") == 1  # printed twice before


def test_a_gzipped_batch_table_and_split_are_read_and_a_table_not_in_utf8_is_refused(tmp_path, capsys):
    shutil.copy(PROTEIN, tmp_path / "rec.pdb.gz")
    run = ["dock", "--batch", str(tmp_path / "table.csv.gz"), "--autobox-ligand", LIGAND, "--out", str(tmp_path / "o"),
           *FAST, "--model", "none"]
    for encoding in ("utf-8", "cp1252"):  # Excel's "CSV (Windows)": its names and paths would be read as other ones
        with gzip.open(tmp_path / "table.csv.gz", "wt", encoding=encoding) as fh:
            fh.write("protein,ligand,name\nrec.pdb.gz,CCO,caf\xe9\n")
        code = main(run + ["--overwrite"])
        assert code == (0 if encoding == "utf-8" else 2)
    assert "is not UTF-8 text" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "o").iterdir() if p.is_dir()] == ["caf\xe9"]
    from sciddiff.dock.data import read_split

    with gzip.open(tmp_path / "split.txt.gz", "wt") as fh:
        fh.write("a/x\n# comment\nb/y\n")
    assert read_split(tmp_path / "split.txt.gz") == ["a/x", "b/y"]


def test_batch_table_from_a_spreadsheet(tmp_path, capsys):
    shutil.copy(LIGAND, tmp_path / "lig.sdf")
    shutil.copy(PROTEIN, tmp_path / "rec.pdb.gz")
    table = tmp_path / "table.csv"
    run = ["dock", "--batch", str(table), "--autobox-ligand", LIGAND, "--out", str(tmp_path / "o"), *FAST, "--model", "none"]
    table.write_text("protein,ligand,name\nrec.pdb.gz,lig.sdf,good\nrec.pdb.gz\n")  # a short row: no name
    assert main(run) == 2 and "line 3: the name '' is empty" in capsys.readouterr().err
    table.write_text("protein,ligand,name\nrec.pdb.gz,lig.sdf,good\n,,\n\nrec.pdb.gz,CCO,good\n")  # the file's lines
    assert main(run) == 2 and "line 5: the name 'good' is line 2's too" in capsys.readouterr().err
    # byte-order mark, blanks after commas, CRLF; an empty ligand cell skips its row
    # and rows of bare commas (cells once used) and a header cell with a trailing blank
    table.write_bytes("\ufeffprotein, ligand, name \r\nrec.pdb.gz, lig.sdf, good\r\nrec.pdb.gz,,empty\r\n,,\r\n,,\r\n"
                      .encode())
    code = main(run)
    assert code == 1 and "empty: skipped: empty protein or ligand cell" in capsys.readouterr().err
    assert (tmp_path / "o" / "good" / "rank1.sdf").exists() and not (tmp_path / "o" / "empty").exists()


def test_dock_eval_reports_success_rates(tmp_path):
    root = tmp_path / "data"
    folder = root / "set" / "1uou"
    folder.mkdir(parents=True)
    shutil.copy(PROTEIN, folder / "1uou_protein.pdb.gz")
    with open(LIGAND, "rb") as src, gzip.open(folder / "1uou_ligand.sdf.gz", "wb") as dst:
        dst.write(src.read())
    split = tmp_path / "split.txt"
    split.write_text("set/1uou\n")
    code = main(["dock-eval", "--data", str(root), "--split", str(split), "--autobox", "--out", str(tmp_path / "ev"),
                 "--no-posebusters", "--ranking", "learned", *FAST])
    assert code == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n"] == 1 and 0 <= summary["top1_rmsd_lt_2A"] <= 1 and summary["median_rmsd_top1"] < 20
    # the learned ranking and the energy ranking of the same poses, side by side
    assert summary["ranking"] == "learned" and summary["top1_rmsd_lt_2A"] == summary["top1_rmsd_lt_2A_learned"]
    assert {"top5_rmsd_lt_2A_energy", "median_rmsd_top1_energy"} <= summary.keys()
    assert (tmp_path / "ev" / "results.csv").read_text().startswith("complex,")
    assert (tmp_path / "ev" / "success_curves.png").read_bytes().startswith(b"\x89PNG")


def test_dock_eval_refuses_a_bad_autobox_add_and_an_offset_past_the_end(tmp_path, capsys):
    split = tmp_path / "split.txt"
    split.write_text("a/x\nb/y\n")
    run = ["dock-eval", "--data", str(tmp_path), "--split", str(split), "--out", str(tmp_path / "ev")]
    for extra, message in ((["--autobox", "--autobox-add", "nan"], "--autobox-add must be"),
                           (["--autobox", "--autobox-add", "-3"], "--autobox-add must be"),
                           (["--offset", "5"], "--offset 5 is past the end")):
        assert main([*run, *extra]) == 2 and message in capsys.readouterr().err
        assert not (tmp_path / "ev").exists()


def test_dock_eval_resumes_an_interrupted_run(tmp_path, capsys):
    folder = tmp_path / "data" / "set" / "1uou"
    folder.mkdir(parents=True)
    shutil.copy(PROTEIN, folder / "1uou_protein.pdb.gz")
    shutil.copy(LIGAND, folder / "1uou_ligand.sdf")
    (tmp_path / "data" / "set" / "empty").mkdir()
    split = tmp_path / "split.txt"
    split.write_text("# a comment\nset/1uou\nset/empty  # no files\n")
    run = ["dock-eval", "--data", str(tmp_path / "data"), "--split", str(split), "--autobox", "--out",
           str(tmp_path / "ev"), *FAST, "--model", "none"]
    typo = tmp_path / "typo.txt"
    typo.write_text("set/1uou\nset/1uuo\n")
    assert main([*run[:4], str(typo), *run[5:]]) == 2 and "1 of the 2 complexes" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()  # refused before any work
    assert main(run) == 1  # the complex without files counts as a miss; the comments are no complexes
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["n"] == 2
    full = (tmp_path / "ev" / "results.csv").read_text().splitlines()
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    (tmp_path / "ev" / "results.csv").write_text("\n".join(full[:2]) + "\n")  # stopped after the first complex
    (tmp_path / "ev" / "summary.json").unlink()
    assert main([*run, "--resume"]) == 1
    assert (tmp_path / "ev" / "results.csv").read_text().splitlines() == full  # 1uou kept (its seconds too)
    assert json.loads((tmp_path / "ev" / "summary.json").read_text()) == summary
    assert main([*run, "--resume", "--mc-rounds", "3"]) == 2 and "(other settings)" in capsys.readouterr().err
    assert main(run) == 2 and "holds an evaluation" in capsys.readouterr().err  # never rewritten by accident
    assert main([*run, "--resume", "--overwrite"]) == 2 and "not both" in capsys.readouterr().err
    assert (tmp_path / "ev" / "results.csv").read_text().splitlines() == full
    # a resume with another selection rewrote results.csv without the earlier rows (or left a summary of fewer)
    assert main([*run, "--resume", "--limit", "1"]) == 2 and "this selection leaves out" in capsys.readouterr().err
    assert (tmp_path / "ev" / "results.csv").read_text().splitlines() == full
    # `ls -d */` writes a trailing /, which looked for set/1uou/_ligand.sdf; a repeated line was docked twice
    slashed = tmp_path / "slashed.txt"
    slashed.write_text("set/empty/\nset/empty\n")
    assert main([*run[:4], str(slashed), *run[5:7], str(tmp_path / "ev3"), *run[8:]]) == 1
    assert "repeated complex line" in capsys.readouterr().err
    assert json.loads((tmp_path / "ev3" / "summary.json").read_text())["n"] == 1
    # without PoseBusters (pb_valid left empty): a resumed table had that column moved to its end
    quick = [*run[:-len(FAST) - 3], str(tmp_path / "ev2"), *FAST, "--model", "none", "--no-posebusters"]
    assert main(quick) == 1
    full = (tmp_path / "ev2" / "results.csv").read_text().splitlines()
    (tmp_path / "ev2" / "results.csv").write_text("\n".join(full[:2]) + "\n")
    assert main([*quick, "--resume"]) == 1 and (tmp_path / "ev2" / "results.csv").read_text().splitlines() == full
    recorded = json.loads((tmp_path / "ev" / "run.json").read_text())
    kept = (tmp_path / "ev" / "results.csv").read_text()
    del recorded["settings"]["sampler"]  # a run recorded before --sampler was: it sampled by the reverse SDE
    (tmp_path / "ev" / "run.json").write_text(json.dumps(recorded))
    assert main([*run, "--resume"]) == 2 and "(other settings)" in capsys.readouterr().err
    assert main([*run, "--resume", "--sampler", "reverse_sde"]) == 1
    assert (tmp_path / "ev" / "results.csv").read_text() == kept


def test_an_interrupted_dock_eval_overwrite_leaves_no_earlier_rows_to_resume(tmp_path, capsys, monkeypatch):
    """--overwrite wrote its run.json beside the earlier results.csv; stopped before its first complex, a --resume
    with its options took the earlier run's rows as its own (exit 0, nothing docked)."""
    from sciddiff.dock import data

    folder = tmp_path / "data" / "set" / "1uou"
    folder.mkdir(parents=True)
    shutil.copy(PROTEIN, folder / "1uou_protein.pdb.gz")
    shutil.copy(LIGAND, folder / "1uou_ligand.sdf")
    split = tmp_path / "split.txt"
    split.write_text("set/1uou\n")
    run = ["dock-eval", "--data", str(tmp_path / "data"), "--split", str(split), "--autobox", "--out",
           str(tmp_path / "ev"), *FAST, "--model", "none", "--no-posebusters"]
    (tmp_path / "dockrun").mkdir()  # a `sciddiff dock` output: its summary.json was replaced by the evaluation's
    (tmp_path / "dockrun" / "summary.json").write_text("{}")
    assert main([*run[:7], str(tmp_path / "dockrun"), *run[8:]]) == 2
    assert "not an evaluation" in capsys.readouterr().err
    assert (tmp_path / "dockrun" / "summary.json").read_text() == "{}"
    assert main(run) == 0
    earlier = (tmp_path / "ev" / "results.csv").read_text()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(data, "complex_files", interrupt)  # the first thing done per complex, after run.json
        assert main([*run, "--seed", "1", "--overwrite"]) == 130
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["run.json"]  # the earlier results went first
    assert main([*run, "--seed", "1", "--resume"]) == 0
    assert (tmp_path / "ev" / "results.csv").read_text() != earlier  # docked again, with seed 1


def test_idle_threads_follows_the_load(monkeypatch):
    from sciddiff import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for others, threads in [(0.0, 2), (0.33, 2), (1.0, 1), (5.0, 1)]:
        monkeypatch.setattr(cli, "_other_running", lambda: others)
        assert cli.idle_threads() == threads
    assert cli._other_running() >= 0  # the real reading works here
    monkeypatch.undo()
    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(cli, "open", lambda *a, **k: StringIO("1.70 2.2 2.3 1/300 4242\n"), raising=False)
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (1.7, 2.2, 2.3))  # a bursty neighbour: off the queue right now
    assert cli._other_running() == pytest.approx(0.7) and cli.idle_threads() == 1
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.3, 0.2, 0.1))  # idle: both cores
    assert cli._other_running() == 0 and cli.idle_threads() == 2


def test_mmcif_protein_reads_like_its_pdb(tmp_path, capsys):
    from Bio.PDB import MMCIFIO, PDBParser

    from sciddiff.dock.receptor import load_receptor

    structure = PDBParser(QUIET=True).get_structure("p", gzip.open(PROTEIN, "rt"))
    for chain in structure[0]:
        chain.id = chain.id * 3  # large assemblies use multi-letter chain ids, which PDB records cannot hold
    writer = MMCIFIO()
    writer.set_structure(structure)
    cif = tmp_path / "rec.cif"
    writer.save(str(cif))
    with open(cif, "rb") as src, gzip.open(tmp_path / "rec.cif.gz", "wb") as dst:
        dst.write(src.read())
    ref = load_receptor(PROTEIN)
    for path in (cif, tmp_path / "rec.cif.gz"):
        rec = load_receptor(path)
        assert np.array_equal(rec.coords, ref.coords) and np.array_equal(rec.res_type, ref.res_type)
        assert np.array_equal(rec.elements, ref.elements) and rec.pdb_text.count("ATOM") == ref.pdb_text.count("ATOM")
        assert "chain ids longer than PDB's one letter renamed: AAA -> " in capsys.readouterr().err
    second = structure[0].copy()  # an ensemble: the first model is the receptor, with the note a PDB file gets
    second.id, second.serial_num = 1, 2
    structure.add(second)
    writer.set_structure(structure)
    writer.save(str(tmp_path / "two.cif"))
    assert np.array_equal(load_receptor(tmp_path / "two.cif").coords, ref.coords)
    assert "two.cif has 2 models: the first is the receptor" in capsys.readouterr().err
    (tmp_path / "bad.cif").write_text("data_x\nloop_\n_atom_site.id\n1\n")
    code = main(["dock", "--protein", str(tmp_path / "bad.cif"), "--ligand", LIGAND, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bad.cif" in err and not (tmp_path / "o").exists()


def _autodock_type(line: str) -> str:
    """The AutoDock type a PDBQT writer gives this PDB atom (enough of it for a reader test)."""
    element, name = line[76:78].strip(), line[12:16].strip()
    return {"C": "A" if name in ("CG", "CZ") else "C", "N": "NA", "O": "OA", "S": "SA", "H": "HD"}.get(
        element, element.capitalize())


def test_pdbqt_receptor_and_ligand_read_like_pdb_and_smiles(tmp_path, capsys):
    from sciddiff.dock.box import box_from_ligand
    from sciddiff.dock.ligand_io import load_ligand
    from sciddiff.dock.receptor import load_receptor

    records = [ln for ln in gzip.open(PROTEIN, "rt").read().splitlines() if ln.startswith(("ATOM", "HETATM"))]
    rec_path = tmp_path / "rec.pdbqt"
    rec_path.write_text("".join(f"{ln[:54]}  1.00  0.00    {0.1:+6.3f} {_autodock_type(ln):<2}\n" for ln in records))
    ref, rec = load_receptor(PROTEIN), load_receptor(rec_path)
    assert np.array_equal(rec.coords, ref.coords) and np.array_equal(rec.elements, ref.elements)
    assert np.array_equal(rec.res_type, ref.res_type) and set(rec.elements) >= {"C", "N", "O"}

    crystal = Chem.MolFromMolFile(LIGAND)
    lig_path = tmp_path / "lig.pdbqt"
    atoms = Chem.MolToPDBBlock(crystal).splitlines()
    body = "".join(f"{ln[:54]}  1.00  0.00    {0.0:+6.3f} {_autodock_type(ln):<2}\n" for ln in atoms
                   if ln.startswith(("ATOM", "HETATM")))
    assert np.allclose(box_from_ligand(lig_path.write_text(body) and lig_path).center,
                       box_from_ligand(LIGAND).center, atol=1e-3)
    with pytest.raises(UserError, match="bond orders"):
        load_ligand(lig_path)
    lig_path.write_text(f"REMARK SMILES {Chem.MolToSmiles(crystal)}\nREMARK SMILES IDX 1 1\n" + body)
    assert Chem.MolToSmiles(load_ligand(lig_path)) == Chem.MolToSmiles(crystal)
    code = main(["dock", "--protein", str(rec_path), "--ligand", str(lig_path), "--autobox-ligand", LIGAND,
                 "--out", str(tmp_path / "o"), *FAST])
    assert code == 0 and (tmp_path / "o" / "complex_rank1.pdb").read_text().count("ATOM") >= len(records) // 2


def test_dock_score_reproduces_the_docked_scores_and_minimize_only_lowers_the_energy(tmp_path, capsys):
    code, out = _dock(tmp_path, "run", "--rescore", "none")
    assert code == 0
    poses = tmp_path / "poses.sdf"
    poses.write_text("".join((out / f"rank{i}.sdf").read_text() for i in (1, 2, 3)))
    capsys.readouterr()
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", str(poses), "--json", str(tmp_path / "s.json")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4  # header + one row per pose
    scored = json.loads((tmp_path / "s.json").read_text())["poses"]
    for i, row in enumerate(scored, 1):
        tags = next(Chem.SDMolSupplier(str(out / f"rank{i}.sdf"))).GetPropsAsDict()
        assert row["score"] == pytest.approx(tags["score"], abs=2e-3)
        assert row["energy"] == pytest.approx(tags["energy"], abs=2e-3)
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", str(poses), "--minimize", "--minimize-steps", "5",
                 "--out", str(tmp_path / "relaxed.sdf")]) == 0
    relaxed_tags = [m.GetPropsAsDict() for m in Chem.SDMolSupplier(str(tmp_path / "relaxed.sdf"))]
    assert all("moved" in t and "rank" not in t and "confidence" not in t for t in relaxed_tags)  # stale ones dropped

    # the crystal pose shifted by 0.7 A: relaxing lowers the energy, moves it back towards the crystal, keeps its bonds
    crystal = Chem.MolFromMolFile(LIGAND)
    shifted = Chem.Mol(crystal)
    conf = shifted.GetConformer()
    for i in range(shifted.GetNumAtoms()):
        p = conf.GetAtomPosition(i)
        conf.SetAtomPosition(i, (p.x + 0.7, p.y, p.z))
    (tmp_path / "shifted.sdf").write_text(Chem.MolToMolBlock(shifted) + "$$$$\n")
    args = ["dock-score", "--protein", PROTEIN, "--ligand", str(tmp_path / "shifted.sdf")]
    assert main([*args, "--json", str(tmp_path / "before.json")]) == 0
    assert main([*args, "--minimize", "--out", str(tmp_path / "min.sdf"), "--json", str(tmp_path / "after.json")]) == 0
    before, after = (json.loads((tmp_path / f).read_text())["poses"][0] for f in ("before.json", "after.json"))
    assert after["energy"] < before["energy"] - 0.5 and after["moved"] > 0.1
    relaxed = next(Chem.SDMolSupplier(str(tmp_path / "min.sdf")))
    xyz, ref = relaxed.GetConformer().GetPositions(), crystal.GetConformer().GetPositions()
    assert np.sqrt(((xyz - ref) ** 2).sum(1).mean()) < 0.7  # closer to the crystal than the shifted input
    for b in crystal.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        assert np.linalg.norm(xyz[i] - xyz[j]) == pytest.approx(np.linalg.norm(ref[i] - ref[j]), abs=1e-3)

    capsys.readouterr()
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", "CCO"]) == 2  # a SMILES has no pose
    assert len(capsys.readouterr().err.strip().splitlines()) == 1

    assert "warning" not in capsys.readouterr().err  # the poses above touched the protein
    far, flat = Chem.Mol(crystal), Chem.Mol(crystal)
    for i in range(crystal.GetNumAtoms()):
        p = crystal.GetConformer().GetAtomPosition(i)
        far.GetConformer().SetAtomPosition(i, (p.x + 1000, p.y, p.z))
        flat.GetConformer().SetAtomPosition(i, (0.0, 0.0, 0.0) if i < 2 else (p.x, p.y, p.z))
    (tmp_path / "odd.sdf").write_text("".join(Chem.MolToMolBlock(m) + "$$$$\n" for m in (far, flat)))
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", str(tmp_path / "odd.sdf")]) == 0
    err = capsys.readouterr().err
    assert "(pose 1): no protein atom within 8 A" in err and "(pose 2): atoms closer than 0.5 A" in err


def test_complex_files_take_plain_or_gzipped_files(tmp_path):
    from sciddiff.dock.data import complex_files

    for cid, files in {"pb/7abc": ("7abc_protein.pdb", "7abc_ligand.sdf"),  # the PoseBusters sets' layout
                       "set/1xyz": ("1xyz_protein.cif.gz", "1xyz_ligand.mol2")}.items():
        (tmp_path / cid).mkdir(parents=True)
        for name in files:
            (tmp_path / cid / name).write_text("")
        assert complex_files(tmp_path, cid) == tuple(str(tmp_path / cid / name) for name in files)
    assert complex_files(tmp_path, "set/none")[0].endswith("none_protein.pdb.gz")  # reported as not found


def test_a_c_alpha_trace_gets_a_warning(tmp_path, capsys):
    lines = gzip.open(PROTEIN, "rt").read().splitlines()
    ca = [ln for ln in lines if ln.startswith("ATOM") and ln[12:16].strip() == "CA"]
    (tmp_path / "ca.pdb").write_text("\n".join(ca) + "\nEND\n")
    code = main(["dock-score", "--protein", str(tmp_path / "ca.pdb"), "--ligand", LIGAND])
    assert code == 0 and "100% of its residues have only a C-alpha atom" in capsys.readouterr().err
    assert main(["dock-score", "--protein", PROTEIN, "--ligand", LIGAND]) == 0
    assert "C-alpha" not in capsys.readouterr().err  # an all-atom protein gets no warning


def test_dock_command_imports_e3nn_without_dynamo_or_pyg():
    """`sciddiff dock` loads its model without torch._dynamo (pulled in by one e3nn decorator) or torch-geometric,
    1.5-2 s of imports on 2 cores (docs/dock.md); importing the library itself leaves torch's decorator alone."""
    code = ("import sys, torch\n"
            "from sciddiff.dock.cli import _e3nn_without_dynamo\n"
            "disable = torch.compiler.disable\n"
            "with _e3nn_without_dynamo():\n"
            "    import sciddiff.dock.sampler\n"
            "assert torch.compiler.disable is disable\n"
            "print('torch._dynamo' in sys.modules, 'torch_geometric' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_ligand_without_stereo_is_docked_as_one_named_isomer(tmp_path, capsys):
    from rdkit import Chem

    out = tmp_path / "nostereo"  # two stereocentres and a double bond left open: 8 isomers
    assert main(["dock", "--protein", PROTEIN, "--ligand", "CC(N)C(=O)NC(Cc1ccccc1)C(=O)OC=CC", "--autobox-ligand",
                 LIGAND, "--out", str(out), *FAST, "--model", "none"]) == 0
    assert "stereo not specified (atom 2, atom 7, double bond at atom 18): docked one isomer" in capsys.readouterr().err
    smiles = {Chem.MolToSmiles(Chem.MolFromMolFile(str(f))) for f in out.glob("rank*.sdf")}
    assert len(smiles) == 1 and "@" in smiles.pop()  # before, the ranks mixed diastereomers
    assert "stereo not specified" in json.loads((out / "summary.json").read_text())["ligand_repairs"]


def test_a_ligand_given_with_hydrogens_gets_them_back_in_every_written_pose(tmp_path):
    from rdkit import Chem

    with_h = Chem.AddHs(Chem.MolFromMolFile(LIGAND), addCoords=True)
    Chem.MolToMolFile(with_h, str(tmp_path / "ligH.sdf"))
    n_h = sum(a.GetAtomicNum() == 1 for a in with_h.GetAtoms())
    for ligand, expected_h in ((str(tmp_path / "ligH.sdf"), n_h), (LIGAND, 0)):
        out = tmp_path / f"out{expected_h}"
        assert main(["dock", "--protein", PROTEIN, "--ligand", ligand, "--autobox-ligand", LIGAND, "--out", str(out),
                     *FAST, "--model", "none"]) == 0
        pose = next(Chem.SDMolSupplier(str(out / "rank1.sdf"), removeHs=False))
        assert sum(a.GetAtomicNum() == 1 for a in pose.GetAtoms()) == expected_h
        assert (Chem.MolToSmiles(Chem.RemoveAllHs(pose), isomericSmiles=False)
                == Chem.MolToSmiles(Chem.MolFromMolFile(LIGAND), isomericSmiles=False))
        assert not any(name.startswith("_sciddiff") for name in pose.GetPropNames())
        heavy = Chem.RemoveAllHs(pose).GetConformer().GetPositions()
        rescored = tmp_path / f"rescored{expected_h}.sdf"
        assert main(["dock-score", "--protein", PROTEIN, "--ligand", str(out / "rank1.sdf"), "--out",
                     str(rescored)]) == 0
        again = next(Chem.SDMolSupplier(str(rescored), removeHs=False))
        assert sum(a.GetAtomicNum() == 1 for a in again.GetAtoms()) == expected_h
        assert np.allclose(Chem.RemoveAllHs(again).GetConformer().GetPositions(), heavy, atol=1e-3)


def test_the_complex_gives_the_ligand_a_free_chain_and_holds_the_receptor_that_was_docked_against(tmp_path):
    import warnings

    from Bio.PDB import PDBParser
    from rdkit import Chem

    from sciddiff.dock.ligand_io import pose_mol
    from sciddiff.dock.receptor import complex_pdb, load_receptor

    lines = gzip.open(PROTEIN, "rt").read().splitlines()
    atoms = [ln for ln in lines if ln.startswith(("ATOM", "HETATM"))]
    chain_l = [ln[:21] + "L" + ln[22:] for ln in atoms]  # the protein's own chain is called L
    water = "HETATM99990  O   HOH W 900       0.000   0.000   0.000  1.00  0.00           O"
    (tmp_path / "rec.pdb").write_text("\n".join(chain_l + ["TER", water, "END"]) + "\n")
    ligand = Chem.MolFromMolFile(LIGAND)
    for keep_waters in (True, False):
        receptor = load_receptor(tmp_path / "rec.pdb", keep_waters=keep_waters)
        text = complex_pdb(receptor, pose_mol(ligand, ligand.GetConformer().GetPositions()))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (tmp_path / "complex.pdb").write_text(text)
            model = PDBParser().get_structure("c", tmp_path / "complex.pdb")[0]
        assert not [w for w in caught if "TER" in str(w.message)]  # a bare "TER" was an unrecognised record
        lig_chains = {c.id for c in model for r in c if r.get_resname() == "LIG"}
        assert lig_chains and "L" not in lig_chains
        assert sum(r.get_resname() == "LIG" for c in model for r in c) == 1
        assert ("HOH" in text) == keep_waters


def test_batch_rows_may_carry_their_own_box_and_unread_columns_are_named(tmp_path, capsys):
    shutil.copy(LIGAND, tmp_path / "lig.sdf")
    shutil.copy(PROTEIN, tmp_path / "rec.pdb.gz")
    table = tmp_path / "table.csv"
    # a header cell with a trailing blank ("autobox_ligand "): the column was found, then read as empty: blind
    table.write_text("protein,ligand,name,autobox_ligand ,notes\nrec.pdb.gz,lig.sdf,boxed,lig.sdf,x\n")
    assert main(["dock", "--batch", str(table), "--out", str(tmp_path / "o"), *FAST, "--model", "none"]) == 0
    err = capsys.readouterr().err
    assert "columns notes are not read" in err and "boxed: rank 1 score" in err and "blind" not in err
    summary = json.loads((tmp_path / "o" / "boxed" / "summary.json").read_text())
    assert summary["mode"] != "blind"  # the row's box was ignored before: every row docked blind
    assert main(["dock", "--batch", str(table), "--autobox-ligand", LIGAND, "--out", str(tmp_path / "o2"),
                 *FAST, "--model", "none"]) == 2
    assert "autobox_ligand column" in capsys.readouterr().err


def test_a_comma_separated_smiles_file_reads_like_a_whitespace_separated_one(tmp_path):
    from sciddiff.dock.ligand_io import load_ligands

    (tmp_path / "lib.smi").write_text("smiles,name\nc1ccccc1C(=O)NO,hydroxamate\nCC(=O)Nc1ccc(O)cc1\tparacetamol\n")
    records = load_ligands(tmp_path / "lib.smi")
    assert [(r.name, r.mol is not None) for r in records] == [("hydroxamate", True), ("paracetamol", True)]


def test_autobox_ligand_boxes_every_molecule_of_its_file(tmp_path, capsys):
    """As gnina's --autobox_ligand: a reference of several poses or ligands gives the box around all of them (the
    first record alone boxed a pose file's rank 1 and left the others outside)."""
    from rdkit.Chem import rdMolTransforms

    from sciddiff.dock.box import box_from_ligand

    crystal = Chem.MolFromMolFile(LIGAND, removeHs=False)
    moved = Chem.Mol(crystal)
    shift = np.eye(4)
    shift[:3, 3] = (6.0, 0.0, 0.0)
    rdMolTransforms.TransformConformer(moved.GetConformer(), shift)
    path = tmp_path / "two.sdf"
    with Chem.SDWriter(str(path)) as w:
        w.write(crystal)
        w.write(moved)
    one, two = box_from_ligand(LIGAND), box_from_ligand(path)
    assert np.allclose(two.size - one.size, (6.0, 0, 0), atol=1e-3)
    assert np.allclose(two.center - one.center, (3.0, 0, 0), atol=1e-3)
    assert "all 2 molecules" in capsys.readouterr().err
    box_from_ligand(LIGAND)
    assert capsys.readouterr().err == ""  # one molecule: no note


def test_bad_input_is_reported_before_torch_is_imported(tmp_path):
    """docs/benchmarks.md: a missing input file is reported in a fraction of a second, the application's own modules
    imported, not torch (~2 s on 2 cores; an output helper's import of sciddiff.train brought it back)."""
    code = ("import sys\n"
            "from sciddiff.cli import main\n"
            "for argv in (['dock', '--protein', 'missing.pdb', '--ligand', 'x.sdf', '--out', 'o'],\n"
            "             ['dock-score', '--protein', 'missing.pdb', '--ligand', 'x.sdf'], ['backbone', 'eval', 'm']):\n"
            "    assert main(argv) == 2, argv\n"
            "print('torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False"], run.stderr


def test_the_sampler_option_changes_the_diffusion_starts_and_is_recorded(tmp_path, capsys):
    from sciddiff.dock.box import box_from_ligand
    from sciddiff.dock.cli import DEFAULT_MODEL
    from sciddiff.dock.docking import dock
    from sciddiff.dock.ligand_io import load_ligand
    from sciddiff.dock.receptor import load_receptor
    from sciddiff.dock.sampler import load_score_model
    from sciddiff.dock.settings import DockSettings

    receptor, mol, box = load_receptor(PROTEIN), load_ligand(LIGAND), box_from_ligand(LIGAND)
    model = load_score_model(DEFAULT_MODEL)
    # diffusion starts only, no Monte Carlo: each searched pose is its start's local minimum
    fast = dict(samples=4, random_starts=0, steps=4, mc_rounds=0, poses=2, seed=3)
    searched = {name: dock(receptor, mol, box, model, DockSettings(sampler=name, **fast), show_progress=False).search
                for name in ("reverse_sde", "euler_ancestral")}
    assert searched["reverse_sde"].shape == searched["euler_ancestral"].shape
    assert np.abs(searched["reverse_sde"] - searched["euler_ancestral"]).max() > 0.5
    with pytest.raises(ValueError, match="unknown sampler"):  # before any work
        DockSettings(sampler="heun")
    code, out = _dock(tmp_path, "sde", "--sampler", "reverse_sde")  # not the default
    assert code == 0 and json.loads((out / "summary.json").read_text())["settings"]["sampler"] == "reverse_sde"
    with pytest.raises(SystemExit) as exit_:
        main(["dock", "--protein", PROTEIN, "--ligand", LIGAND, "--out", str(tmp_path / "x"), "--sampler", "ddim"])
    assert exit_.value.code == 2
    assert "invalid choice: 'ddim'" in capsys.readouterr().err and not (tmp_path / "x").exists()
