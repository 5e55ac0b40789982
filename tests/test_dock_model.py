"""Score network: featurization of the example complexes, equivariance, training data noise, a tiny training run."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from e3nn import o3
from rdkit import Chem

from sciddiff.cli import main
from sciddiff.dock import featurize, ligand
from sciddiff.dock.box import box_from_ligand
from sciddiff.dock.data import TrainSet, dsm_loss, preprocess_complex
from sciddiff.dock.ligand_io import load_ligand
from sciddiff.dock.model import ATOM_DIM, ScoreModel, ScoreModelConfig
from sciddiff.dock.receptor import load_receptor
from sciddiff.train.checkpoint import save_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
TINY = ScoreModelConfig(ns=8, nv=2, rec_layers=1, lig_layers=2, n_gauss=8, t_dim=8)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    complexes = [preprocess_complex(str(EXAMPLES / c / f"{c}_protein.pdb.gz"), str(EXAMPLES / c / f"{c}_ligand.sdf"),
                                    n_conformers=1) for c in ("1s3v", "1uou")]
    path = tmp_path_factory.mktemp("dock") / "tiny.pt"
    save_checkpoint(path, {"complexes": complexes, "names": ["1s3v", "1uou"], "failed": [], "meta": {}})
    return TrainSet(str(path), "cpu", TINY)


@pytest.mark.parametrize("cid,n_atoms,n_tors", [("1ia1", 19, 2), ("1of6", 13, 3), ("1s3v", 27, 6), ("1uou", 16, 2)])
def test_featurize_examples(cid, n_atoms, n_tors):
    rec = load_receptor(EXAMPLES / cid / f"{cid}_protein.pdb.gz")
    mol = load_ligand(EXAMPLES / cid / f"{cid}_ligand.sdf")
    tors = ligand.rotatable_torsions(mol)
    g = featurize.ligand_graph(mol, tors)
    assert g["feat"].shape == (n_atoms, ATOM_DIM) and tors.n == n_tors
    assert g["bond_index"].shape[1] == 2 * mol.GetNumBonds()
    assert torch.all(g["feat"][:, :10].sum(1) == 1)  # exactly one element class per atom
    r = featurize.receptor_graph(rec)
    assert r["pos"].shape[0] == rec.n_residues > 100
    assert torch.allclose(r["vec"].norm(dim=-1)[r["vec"].norm(dim=-1) > 0], torch.tensor(1.0), atol=1e-5)
    if cid == "1ia1":  # the NADPH cofactor stays in the receptor as atoms (not residues)
        assert "NDP" in set(rec.res_names[rec.is_hetero].tolist())


def test_score_model_is_equivariant(tiny_set):
    torch.manual_seed(0)
    model = ScoreModel(TINY).double()
    lig, rec, t, _ = tiny_set.batch([0, 1], torch.Generator().manual_seed(0))
    lig = {k: v.double() if v.is_floating_point() else v for k, v in lig.items()}
    rec = {k: v.double() if v.is_floating_point() else v for k, v in rec.items()}
    torch.manual_seed(1)
    q = o3.rand_matrix().double()
    shift = torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64)
    with torch.no_grad():
        tr, rot, tor = model(lig, rec, t.double())
        lig2 = dict(lig, pos=lig["pos"] @ q.T + shift)
        rec2 = dict(rec, pos=rec["pos"] @ q.T + shift, vec=rec["vec"] @ q.T)
        tr2, rot2, tor2 = model(lig2, rec2, t.double())
    assert tor.numel() == 8
    torch.testing.assert_close(tr @ q.T, tr2, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(rot @ q.T, rot2, atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(tor, tor2, atol=1e-9, rtol=1e-7)


def test_training_batch_noise_matches_sigma(tiny_set):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.0, 1.0])
    lig, rec, _, targets = tiny_set.batch([0, 0], g, t=t)
    x0 = tiny_set.items[0]["pos"][0]
    n = x0.shape[0]
    # t = 0: tiny noise, the pose is the conformer-matched crystal pose (up to sigma_min)
    assert (lig["pos"][:n] - x0).norm(dim=-1).max() < 1.0
    # bond lengths survive any torsion noise
    bonds = tiny_set.items[0]["bond_index"].long()
    for half in (lig["pos"][:n], lig["pos"][n:]):
        torch.testing.assert_close((half[bonds[0]] - half[bonds[1]]).norm(dim=-1), (x0[bonds[0]] - x0[bonds[1]]).norm(dim=-1),
                                   atol=1e-4, rtol=0)
    assert targets["tor"].shape == (2 * tiny_set.items[0]["tor_bonds"].shape[0],)


def test_tiny_training_run_reduces_the_loss(tiny_set):
    torch.manual_seed(0)
    model = ScoreModel(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    t = torch.tensor([0.3, 0.5, 0.7, 0.4])
    losses = []
    for _ in range(40):  # a fixed batch (same noise every step): the loss must fall
        lig, rec, tt, targets = tiny_set.batch([0, 1, 0, 1], torch.Generator().manual_seed(0), t=t)
        loss, _ = dsm_loss(model, lig, rec, tt, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_training_runs_data_parallel_under_torchrun(tmp_path):
    complexes = [preprocess_complex(str(EXAMPLES / c / f"{c}_protein.pdb.gz"), str(EXAMPLES / c / f"{c}_ligand.sdf"),
                                    n_conformers=1) for c in ("1s3v", "1uou")]
    # 1uou as a rigid ligand: a rank whose batch has no rotatable bond leaves the torsion head unused, which stopped
    # DDP ("parameters that were not used in producing loss")
    complexes[1] = {**complexes[1], "tor_bonds": complexes[1]["tor_bonds"][:0], "tor_mask": complexes[1]["tor_mask"][:0]}
    save_checkpoint(tmp_path / "tiny.pt", {"complexes": complexes, "names": ["1s3v", "1uou"], "failed": [], "meta": {}})
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--data", str(tmp_path / "tiny.pt"), "--out", str(run), "--max-steps", "3", "--batch-size", "1",
               "--save-every", "0", "--ns", "8", "--nv", "2", "--rec-layers", "1", "--lig-layers", "2"]
    proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("saved ") == 1  # rank 0 alone prints
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["step"] == 3 and len(state["rng"]) == 2  # saved every step: a collective on both ranks, no hang
    weights = [torch.load(run / f"rank{r}_weights.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*weights))  # different complexes, gradients averaged: same weights


def test_trainer_and_preprocessing_refuse_bad_input_before_any_work(tmp_path, capsys, monkeypatch):
    from sciddiff.dock import data as data_module
    from sciddiff.dock import train as train_module
    from sciddiff.train import interrupt

    complexes = [preprocess_complex(str(EXAMPLES / "1uou" / "1uou_protein.pdb.gz"),
                                    str(EXAMPLES / "1uou" / "1uou_ligand.sdf"), n_conformers=1)]
    save_checkpoint(tmp_path / "tiny.pt", {"complexes": complexes, "names": ["1uou"], "failed": [], "meta": {}})
    save_checkpoint(tmp_path / "empty.pt", {"complexes": [], "names": [], "failed": [], "meta": {}})
    run = tmp_path / "run"
    base = ["--data", str(tmp_path / "tiny.pt"), "--out", str(run), "--batch-size", "1", "--ns", "8", "--nv", "2",
            "--rec-layers", "1", "--lig-layers", "2"]
    policy = str(EXAMPLES.parents[0] / "policy" / "pusht_state.pt")
    for extra, message in [(["--batch-size", "0"], "--batch-size must be >= 1"), (["--lr", "nan"], "--lr"),
                           (["--max-seconds", "nan"], "--max-seconds"), (["--ema-decay", "2"], "--ema-decay"),
                           (["--init", policy], "not a docking score model"),
                           (["--data", str(tmp_path / "empty.pt")], "holds no complexes"),
                           (["--data", str(tmp_path / "nope.pt")], "no docking data file")]:
        assert train_module.main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and not run.exists(), (extra, err)
    narrow = tmp_path / "narrow.pt"  # another featuriser's file failed at step 1, after the run folder was made
    save_checkpoint(narrow, {"complexes": [{**c, "feat": c["feat"][:, :-1]} for c in complexes], "names": ["1uou"],
                             "failed": [], "meta": {}})
    assert train_module.main([*base[2:], "--data", str(narrow)]) == 2 and not run.exists()
    assert "ligand atom features where this code computes" in capsys.readouterr().err
    assert train_module.main([*base, "--max-steps", "2", "--save-every", "0"]) == 0
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"  # 4 steps at once, and 2 + 2: the same weights
    assert train_module.main([*base[:2], "--out", str(straight), *base[4:], "--max-steps", "4"]) == 0
    shutil.copytree(run, resumed)
    assert train_module.main([*base[:2], "--out", str(resumed), *base[4:], "--max-steps", "4"]) == 0
    ours, theirs = (torch.load(d / "score_model.pt", weights_only=True)["weights"] for d in (resumed, straight))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # (the batches and noise were reseeded by the step)
    # the log goes on as one run: the running losses at step 4 as without the stop (they restarted before)
    last = [next(r for r in csv.DictReader(open(d / "log.csv")) if r["step"] == "4") for d in (resumed, straight)]
    assert {k: v for k, v in last[0].items() if k != "seconds"} == {k: v for k, v in last[1].items() if k != "seconds"}
    for extra, message in ((["--ns", "16"], "--init .* has --ns 8: fine-tuning keeps its architecture"),
                           ([], "not a docking score model")):  # a --ns that was silently ignored; a foreign file
        init = str(run / "score_model.pt") if extra else policy
        assert train_module.main([*base[:2], "--out", str(tmp_path / "ft"), "--init", init, *extra]) == 2
        assert re.search(message, capsys.readouterr().err) and not (tmp_path / "ft").exists()
    assert train_module.main([*base, "--max-steps", "3", "--ns", "16"]) == 2  # a resumed run keeps its model
    assert "resuming keeps its model" in capsys.readouterr().err
    calls = []  # a Ctrl-C noticed at the second check between steps: saved there, exit 130, resumable
    monkeypatch.setattr(interrupt, "stop_requested", lambda *_: calls.append(1) or len(calls) > 1)
    assert train_module.main([*base[:-8], "--max-steps", "9", "--save-every", "1000"]) == 130
    assert torch.load(run / "state.pt", weights_only=False)["step"] == 3  # 2 before + 1 step, then the request
    monkeypatch.undo()
    shipped = str(EXAMPLES.parents[0] / "dock" / "score_model.pt")
    assert train_module.main([*base[:-8], "--max-steps", "4", "--init", shipped]) == 0  # resumes; --init noted
    captured = capsys.readouterr()
    assert "resumed" in captured.out and "--init" in captured.err
    commands = json.loads((run / "config.json").read_text())["commands"]  # every call that trained this run
    assert len(commands) >= 3 and commands[-1].endswith(f"--max-steps 4 --init {shipped}")
    # a call with nothing to train leaves the files as they are (it rewrote the model: a new digest and command)
    before = {f: (run / f).read_bytes() for f in ("score_model.pt", "state.pt", "config.json")}
    assert train_module.main([*base[:-8], "--max-steps", "2"]) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert all((run / f).read_bytes() == b for f, b in before.items())

    split = tmp_path / "split.txt"
    split.write_text("set/nope\n")
    (tmp_path / "set" / "nope").mkdir(parents=True)
    out = ["--out", str(tmp_path / "d.pt")]
    assert data_module.main(["--data", str(tmp_path), "--split", str(tmp_path / "x.txt"), *out]) == 2
    assert data_module.main(["--data", str(tmp_path), "--split", str(split), *out]) == 2
    assert "none of the 1 complexes" in capsys.readouterr().err and not (tmp_path / "d.pt").exists()
    (tmp_path / "set" / "1uou").mkdir()  # one complex that prepares beside one that does not: written, exit status 1
    for name in ("1uou_protein.pdb.gz", "1uou_ligand.sdf"):
        shutil.copy(EXAMPLES / "1uou" / name, tmp_path / "set" / "1uou" / name)
    split.write_text("set/1uou\nset/nope\nset/1uou/\n")  # listed twice: prepared once (it weighed double)
    assert data_module.main(["--data", str(tmp_path), "--split", str(split), "--conformers", "1", *out]) == 1
    captured = capsys.readouterr()
    assert "1 complexes (1 failed)" in captured.out and (tmp_path / "d.pt").exists()
    assert "lists 1 complex(es) more than once" in captured.err
    assert data_module.main(["--data", str(tmp_path), "--split", str(split), "--out", str(split)]) == 2  # made a zip
    assert "--out" in capsys.readouterr().err and split.read_text().startswith("set/1uou")
    far = tmp_path / "set" / "far"  # a ligand 80 A from its protein: no receptor residue stored, trained on anyway
    far.mkdir()
    shutil.copy(EXAMPLES / "1uou" / "1uou_protein.pdb.gz", far / "far_protein.pdb.gz")
    mol = Chem.MolFromMolFile(str(EXAMPLES / "1uou" / "1uou_ligand.sdf"))
    conf = mol.GetConformer()
    for i in range(mol.GetNumAtoms()):
        p = conf.GetAtomPosition(i)
        conf.SetAtomPosition(i, (p.x + 80, p.y, p.z))
    Chem.MolToMolFile(mol, str(far / "far_ligand.sdf"))
    split.write_text("set/far\n")
    assert data_module.main(["--data", str(tmp_path), "--split", str(split), "--conformers", "1", *out]) == 2
    assert "no receptor residue within" in capsys.readouterr().err
    assert main(["dock", "--protein", str(EXAMPLES / "1uou" / "1uou_protein.pdb.gz"), "--ligand",
                 str(EXAMPLES / "1uou" / "1uou_ligand.sdf"), "--out", str(tmp_path / "o"), "--model", policy]) == 2
    assert "not a docking score model" in capsys.readouterr().err  # was: "unexpected keyword argument 'obs_type'"


if __name__ == "__main__":  # torchrun's worker for the test above: train, then save this process's live weights
    from sciddiff.dock import train as train_module

    wrapped, wrap = [], train_module.distributed.wrap
    train_module.distributed.wrap = lambda model, **kwargs: wrapped.append(model) or wrap(model, **kwargs)
    train_module.main(sys.argv[1:])
    out = sys.argv[sys.argv.index("--out") + 1]
    torch.save([q.detach() for q in wrapped[0].parameters()], f"{out}/rank{os.environ['RANK']}_weights.pt")


def test_rigid_ligands_keep_every_parameter_in_the_graph_and_a_diverging_run_stops(tmp_path, capsys):
    """A log begun on batches of ligands without rotatable bonds had no "tor" column (the first torsion crashed it;
    under torchrun such a batch stopped DDP: see the torchrun test, one of whose complexes is rigid). A run
    whose every batch was non-finite skipped on until --max-seconds (forever under torchrun) and saved unusable
    weights."""
    from sciddiff.dock import train as train_module

    c = preprocess_complex(str(EXAMPLES / "1uou" / "1uou_protein.pdb.gz"), str(EXAMPLES / "1uou" / "1uou_ligand.sdf"),
                           n_conformers=1)
    rigid = {**c, "tor_bonds": c["tor_bonds"][:0], "tor_mask": c["tor_mask"][:0]}
    save_checkpoint(tmp_path / "rigid.pt", {"complexes": [rigid], "names": ["rigid"], "failed": [], "meta": {}})
    small = ["--data", str(tmp_path / "rigid.pt"), "--batch-size", "1", "--ns", "8", "--nv", "2", "--rec-layers", "1",
             "--lig-layers", "2", "--save-every", "0"]
    assert train_module.main([*small, "--out", str(tmp_path / "run"), "--max-steps", "2"]) == 0
    assert (tmp_path / "run" / "log.csv").read_text().splitlines()[0].endswith(",tor")
    assert train_module.main([*small, "--out", str(tmp_path / "div"), "--max-steps", "50", "--lr", "1e6"]) == 2
    assert "training diverged: 20 batches in a row with non-finite loss" in capsys.readouterr().err


def test_diffusion_samples_do_not_depend_on_the_thread_count():
    """torch's fused SiLU rounded the last bit differently at the edges of each thread's chunk: the samples (and,
    through the search, the poses) moved with the thread count, which the default picks from the machine's load."""
    from sciddiff.dock.cli import DEFAULT_MODEL
    from sciddiff.dock.docking import RECEPTOR_CROP
    from sciddiff.dock.pose import PoseSpace
    from sciddiff.dock.sampler import ComplexScore, load_score_model, sample_poses

    stem = str(EXAMPLES / "1s3v" / "1s3v_")
    receptor, mol = load_receptor(stem + "protein.pdb.gz"), load_ligand(stem + "ligand.sdf")
    box = box_from_ligand(stem + "ligand.sdf")
    tors = ligand.rotatable_torsions(mol)
    space = PoseSpace(torch.as_tensor(ligand.generate_conformers(mol, 1, seed=0)[:1]), tors)
    rec = featurize.receptor_graph(receptor, center=box.center, radius=RECEPTOR_CROP)
    score = ComplexScore(load_score_model(DEFAULT_MODEL), rec, featurize.ligand_graph(mol, tors), space)
    before, samples = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            samples.append(sample_poses(score, torch.as_tensor(box.center), 8, 10, torch.Generator().manual_seed(5)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*samples))


def test_the_sample_recall_example_draws_the_starts_dock_searches_from(monkeypatch):
    """examples/dock_sample_recall.py judges a score model by its raw samples: they must be dock()'s own diffusion
    starts (crop, canonical atom order, conformer, seeds), or its numbers say nothing about the pipeline."""
    import importlib.util

    from sciddiff.dock import docking
    from sciddiff.dock.cli import DEFAULT_MODEL
    from sciddiff.dock.sampler import load_score_model
    from sciddiff.dock.settings import DockSettings

    spec = importlib.util.spec_from_file_location("sample_recall", EXAMPLES.parents[1] / "examples" /
                                                  "dock_sample_recall.py")
    recall = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recall)
    starts = []

    def spy(model, receptor, mol, tors, space, *args):
        out = real(model, receptor, mol, tors, space, *args)
        starts.append(space.coords(*out[:3], conf=out[3]))
        return out

    real = docking.diffusion_starts
    monkeypatch.setattr(docking, "diffusion_starts", spy)
    stem = str(EXAMPLES / "1uou" / "1uou_")
    receptor, crystal = load_receptor(stem + "protein.pdb.gz"), load_ligand(stem + "ligand.sdf")
    box = box_from_ligand(stem + "ligand.sdf")
    settings = DockSettings(samples=3, steps=3, random_starts=2, mc_rounds=1, poses=1, seed=4)
    model = load_score_model(DEFAULT_MODEL)
    docking.dock(receptor, crystal, box, model, settings, show_progress=False)
    mol, samples = recall.diffusion_samples(model, receptor, crystal, box, settings)
    assert mol.GetNumAtoms() == samples.shape[1] and len(starts) == 1
    assert torch.allclose(starts[0], torch.as_tensor(samples), atol=1e-5)
    other_seed = recall.diffusion_samples(model, receptor, crystal, box, DockSettings(samples=3, steps=3, seed=5))[1]
    assert not np.allclose(other_seed, samples)


def test_pocket_samples_sets_the_diffusion_starts_of_the_geometric_pockets_alone(monkeypatch):
    """Blind docking with `pocket_samples`: each geometric pocket diffuses that many starts (the rest of its starts
    random), the refined sites `samples`; a box ignores it."""
    from sciddiff.dock import docking
    from sciddiff.dock.cli import DEFAULT_MODEL
    from sciddiff.dock.sampler import load_score_model
    from sciddiff.dock.settings import DockSettings

    drawn = []

    def spy(model, receptor, mol, tors, space, region, s, *args):
        drawn.append(s.samples)
        return real(model, receptor, mol, tors, space, region, s, *args)

    real = docking.diffusion_starts
    monkeypatch.setattr(docking, "diffusion_starts", spy)
    stem = str(EXAMPLES / "1uou" / "1uou_")
    receptor, mol = load_receptor(stem + "protein.pdb.gz"), load_ligand(stem + "ligand.sdf")
    model = load_score_model(DEFAULT_MODEL)
    for pocket_samples, expected in ((None, [2, 2, 2]), (0, [2]), (1, [1, 1, 2])):
        drawn.clear()
        s = DockSettings(samples=2, steps=2, random_starts=2, mc_chains=4, mc_rounds=1, poses=2, conformers=1,
                         pockets=2, refine_sites=1, pocket_samples=pocket_samples)
        docking.dock(receptor, mol, None, model, s, show_progress=False)
        assert drawn == expected
    drawn.clear()
    docking.dock(receptor, mol, box_from_ligand(stem + "ligand.sdf"), model, s, show_progress=False)
    assert drawn == [2]
