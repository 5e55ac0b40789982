"""The learned rescorer: invariant features, the shipped model, and ranking inside the docking pipeline."""
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddiff.dock import rescore
from sciddiff.dock.box import box_from_ligand
from sciddiff.dock.docking import DockSettings, dock
from sciddiff.dock.ligand import rotatable_torsions
from sciddiff.dock.ligand_io import ligand_coords, load_ligand
from sciddiff.dock.receptor import load_receptor
from sciddiff.dock.rescore_train import relaxed_crystal

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
SHIPPED = Path(__file__).resolve().parents[1] / "data" / "dock" / "rescore.pt"


@pytest.fixture(scope="module")
def complex_1uou():
    rec = load_receptor(EXAMPLES / "1uou" / "1uou_protein.pdb.gz")
    mol = load_ligand(EXAMPLES / "1uou" / "1uou_ligand.sdf")
    return rec, mol, torch.as_tensor(ligand_coords(mol))


def test_features_invariant_to_moving_the_whole_complex(complex_1uou):
    rec, mol, xtal = complex_1uou
    gen = torch.Generator().manual_seed(0)
    poses = xtal + torch.randn(6, *xtal.shape, generator=gen)  # near-site poses with contacts and clashes
    search = xtal + torch.randn(10, *xtal.shape, generator=gen)
    n_tor = rotatable_torsions(mol).n
    f = rescore.Featurizer(rec, mol, n_tor)(poses, search)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    shift = np.array([30.0, -12.0, 7.0])
    moved = dataclasses.replace(rec, coords=(rec.coords @ q.numpy().T + shift).astype(np.float32))
    move = lambda x: (x.double() @ q.T + torch.as_tensor(shift)).float()
    g = rescore.Featurizer(moved, mol, n_tor)(move(poses), move(search))
    assert f.shape == (6, len(rescore.FEATURE_NAMES))
    assert f[:, 7:412].sum() > 0  # the contact histogram is populated
    torch.testing.assert_close(g, f, atol=1e-3, rtol=1e-4)


def test_shipped_model_prefers_the_crystal_pose(complex_1uou):
    """Also: the confidence head is trained (not the 0.5 of zero weights) and more confident about the crystal."""
    rec, mol, _ = complex_1uou
    model = rescore.load_rescorer(SHIPPED)
    crystal = relaxed_crystal(rec, mol)
    away = crystal + torch.tensor([0.0, 0.0, 6.0])  # slid out of the pocket
    poses = torch.cat([crystal, away])
    with torch.no_grad():
        feats = rescore.Featurizer(rec, mol, rotatable_torsions(mol).n)(poses, poses)
        logit, prob = model(feats), model.probability(feats)
    assert torch.isfinite(logit).all() and logit[0] > logit[1] and prob[0] > prob[1]


def test_dock_ranks_the_same_candidates_both_ways(complex_1uou):
    rec, mol, _ = complex_1uou
    box = box_from_ligand(EXAMPLES / "1uou" / "1uou_ligand.sdf")
    s = DockSettings(samples=0, random_starts=8, mc_chains=8, mc_rounds=2, poses=3, ranking="learned")
    model = rescore.load_rescorer(SHIPPED)
    res = dock(rec, mol, box, None, s, show_progress=False, rescorer=model)
    plain = dock(rec, mol, box, None, s, show_progress=False)
    np.testing.assert_allclose(res.candidates, plain.candidates)  # rescoring does not change the search
    assert res.order_energy == plain.order_energy and len(res.order_learned) == 3
    np.testing.assert_allclose(res.coords, res.candidates[res.order_learned])
    with torch.no_grad():
        feats = rescore.Featurizer(rec, mol, res.n_torsions)(torch.as_tensor(res.candidates), torch.as_tensor(res.search))
        logit, prob = model(feats), model.probability(feats)
    assert int(logit.argmax()) == res.order_learned[0]  # the learned ranking leads with the best-scored candidate
    np.testing.assert_allclose(res.confidence, prob[res.order_learned].numpy(), rtol=1e-5)


def test_rescore_training_refuses_bad_input_before_any_work(tmp_path, capsys):
    from sciddiff.dock import rescore_train

    split = tmp_path / "split.txt"
    split.write_text("set/1uou\n")
    decoys = ["decoys", "--data", str(EXAMPLES.parent), "--split", str(split), "--out", str(tmp_path / "d.pt")]
    policy = str(EXAMPLES.parent / "policy" / "pusht_state.pt")
    cases = [([*decoys, "--skip", "5"], "no complexes"), ([*decoys, "--random-starts", "-1"], "--random-starts"),
             ([*decoys, "--score-model", policy], "docking score model"),
             (["train", "--decoys", str(tmp_path / "d.pt"), "--out", str(tmp_path / "r.json")], "name the model file"),
             (["train", "--decoys", str(tmp_path / "d.pt"), "--hidden", "-4", "--out", str(tmp_path / "r.pt")], "--hidden"),
             (["train", "--decoys", str(tmp_path / "d.pt"), "--weight-decay", "nan", "--out", str(tmp_path / "r.pt")],
              "--weight-decay")]
    for argv, message in cases:
        assert rescore_train.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert not list(tmp_path.glob("[dr].*"))
    assert rescore_train.main([*decoys, "--every", "2", "--skip", "1"]) == 2  # --skip ignored before
    assert "--every takes dock-eval's selection" in capsys.readouterr().err
    (tmp_path / "d.pt").write_text("earlier decoys")
    assert rescore_train.main(decoys) == 2 and "pass --overwrite" in capsys.readouterr().err  # replaced before
    # decoys of another featuriser (400 features): an IndexError traceback in training before
    torch.save({"items": [{"complex": "a/b", "features": torch.zeros(3, 400), "rmsd": torch.ones(3),
                           "kind": torch.ones(3, dtype=torch.long), "order_energy": torch.arange(3)}]}, tmp_path / "d.pt")
    assert rescore_train.main(["train", "--decoys", str(tmp_path / "d.pt"), "--out", str(tmp_path / "r.pt")]) == 2
    assert "pose features of another featuriser" in capsys.readouterr().err
    (tmp_path / "d.pt").unlink()
    (tmp_path / "set" / "1uou").mkdir(parents=True)  # the complex's folder without its files: skipped, then refused
    assert rescore_train.main([*decoys[:2], str(tmp_path), *decoys[3:]]) == 2
    assert "none of the 1 complexes could be docked" in capsys.readouterr().err and not (tmp_path / "d.pt").exists()
    # one complex docked, one skipped: its decoys written, and exit 1 as dock.data and dock-eval (0 before)
    shutil.copytree(EXAMPLES / "1uou", tmp_path / "set" / "good")
    for f in (tmp_path / "set" / "good").iterdir():
        f.rename(f.with_name(f.name.replace("1uou", "good")))
    split.write_text("set/good\nset/1uou\n")
    assert rescore_train.main([*decoys[:2], str(tmp_path), *decoys[3:], "--every", "1", "--random-starts", "4",
                               "--mc-chains", "2", "--mc-rounds", "1"]) == 1
    assert "1 of 2 complexes skipped" in capsys.readouterr().err
    assert [it["complex"] for it in torch.load(tmp_path / "d.pt", weights_only=True)["items"]] == ["set/good"]


def test_platt_fit_recovers_a_known_calibration():
    from sciddiff.dock.rescore_train import platt_fit

    rng = np.random.default_rng(0)
    z = rng.normal(-1.0, 1.5, 20000)
    hit = (rng.random(z.size) < 1 / (1 + np.exp(-(1.3 * z + 0.9)))).astype(float)
    a, c = platt_fit(z, hit)
    assert abs(a - 1.3) < 0.06 and abs(c - 0.9) < 0.06
    # six top-1 poses, a hit and a miss both at confidence 1.0 (dock-eval's 3 decimals): Newton's steps diverged to
    # a = -2e8 (every confidence 0); the fit is the maximum of the likelihood of Platt's smoothed targets (Nelder-Mead
    # agrees), and where the logits separate hits from misses its slope stays finite (plain maximum likelihood: 217)
    from scipy.optimize import minimize
    from scipy.special import expit

    conf = np.clip([0.003, 1.0, 0.978, 0.003, 0.021, 1.0], 1e-3, 1 - 1e-3)
    z, hit = np.log(conf / (1 - conf)), np.array([0, 1, 1, 0, 0, 0.0])
    target = np.where(hit > 0, 3 / 4, 1 / 6)  # (N+ + 1) / (N+ + 2), 1 / (N- + 2)
    loss = lambda w: -np.sum(target * np.log(expit(w[0] * z + w[1])) + (1 - target) * np.log(expit(-w[0] * z - w[1])))  # noqa: E731
    best = minimize(loss, [1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-12}).x
    assert np.allclose(platt_fit(z, hit), best, atol=1e-3)
    a, _ = platt_fit(np.linspace(-3, 3, 40), (np.linspace(-3, 3, 40) > 0).astype(float))
    assert 0 < a < 20


def test_calibrate_rescales_the_confidence_and_keeps_the_ranking(tmp_path, capsys):
    import csv
    import json

    from sciddiff.dock.rescore_train import main

    model = rescore.Rescorer(hidden=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        model.linear.weight.normal_(generator=gen)
        model.conf_weight.normal_(std=0.1, generator=gen)  # moderate confidences, as a trained head gives
    path = tmp_path / "r.pt"
    rescore.save_rescorer(model, path, {"version": "test"})
    features = torch.randn(50, len(rescore.FEATURE_NAMES), generator=gen)
    before = rescore.load_rescorer(path)
    # an under-confident head: the hits come at sigmoid(1.5 * logit + 1), not at the reported confidence
    prob = before.probability(features).detach().numpy().clip(1e-3, 1 - 1e-3)
    logit = np.log(prob / (1 - prob))
    rng = np.random.default_rng(2)
    run = tmp_path / "eval"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"rescorer": before.version}))
    with open(run / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["complex", "rmsd_top1", "confidence_top1", "error"])
        for k in range(4000):
            i = k % len(prob)
            hit = rng.random() < 1 / (1 + np.exp(-(1.5 * logit[i] + 1.0)))
            writer.writerow([f"c{k}", 0.5 if hit else 5.0, f"{prob[i]:.3f}", ""])
    out = tmp_path / "cal.pt"
    assert main(["calibrate", "--rescorer", str(path), "--results", str(run / "results.csv"), "--out", str(out)]) == 0
    after = rescore.load_rescorer(out)
    torch.testing.assert_close(after(features), before(features))  # the ranking logits are untouched
    meta = json.loads(out.with_suffix(".json").read_text())["calibration"]
    assert abs(meta["a"] - 1.5) < 0.15 and abs(meta["c"] - 1.0) < 0.15 and meta["brier_after"] < meta["brier_before"]
    expected = torch.sigmoid(meta["a"] * torch.logit(before.probability(features)) + meta["c"])
    torch.testing.assert_close(after.probability(features), expected, atol=1e-5, rtol=1e-4)
    assert after.version == "cal.pt (test, calibrated " + after.version.split("calibrated ")[1]
    # results made with another rescorer are refused with one line
    capsys.readouterr()
    assert main(["calibrate", "--rescorer", str(out), "--results", str(run / "results.csv"),
                 "--out", str(tmp_path / "again.pt")]) == 2
    assert "was not made with" in capsys.readouterr().err and not (tmp_path / "again.pt").exists()
    # a file that is no rescorer, a summary instead of results: one line each (a KeyError traceback before)
    for rescorer, results, message in [(EXAMPLES / "1uou" / "1uou_ligand.sdf", run / "results.csv",
                                        "is not a rescoring model"),
                                       (out, run / "summary.json", "is not a dock-eval results.csv")]:
        if results.name == "summary.json":
            (run / "summary.json").write_text(json.dumps({"rescorer": after.version}))
        assert main(["calibrate", "--rescorer", str(rescorer), "--results", str(results),
                     "--out", str(tmp_path / "again.pt")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
