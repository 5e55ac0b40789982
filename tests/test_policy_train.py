"""Training loop: a 50-step smoke run whose loss falls, resumption, the image path, the compile fallback,
distillation, and data-parallel runs under torchrun."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddiff.cli import UserError
from sciddiff.policy.io import load_policy
from sciddiff.policy.replay_buffer import ReplayBuffer
from sciddiff.policy.train import build_parser, lr_at, train

SMALL = ["--down-dims", "16,32", "--vision-channels", "8,16", "--threads", "1", "--device", "cpu"]


def _demo_store(path, n_episodes=6, length=40, images=False, seed=0):
    """A PushT-shaped zarr store: the agent moves steadily toward where the action points."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer.create(path)
    for _ in range(n_episodes):
        start, goal = rng.uniform(100, 400, 2), rng.uniform(100, 400, 2)
        frac = np.linspace(0, 1, length)[:, None]
        agent = start + frac * (goal - start)
        block = np.concatenate([np.full((length, 2), 256.0), np.full((length, 1), 0.5)], 1)
        ep = {"state": np.concatenate([agent, block], 1).astype(np.float32),
              "action": (agent + (goal - start) / length * 3).astype(np.float32)}
        if images:
            ep["img"] = rng.integers(0, 255, (length, 96, 96, 3)).astype(np.float32)
        buf.add_episode(ep)
    return path


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_training_loss_falls_in_50_steps(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr")
    args = build_parser().parse_args(["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "50",
                                      "--batch-size", "32", "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "10",
                                      "--val-episodes", "1", *SMALL])
    summary = train(args)
    rows = _rows(tmp_path / "run" / "log.csv")
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 5 and int(rows[-1]["step"]) == 50
    assert losses[-1] < 0.6 * losses[0], losses
    assert np.isfinite(summary["val_loss"])
    policy = load_policy(tmp_path / "run" / "policy.pt")
    meta = json.loads((tmp_path / "run" / "policy.json").read_text())["meta"]
    assert meta["step"] == 50 and "--steps 50" in meta["command"] and policy.config.down_dims == (16, 32)
    assert policy.config.extra["train_episodes"] == 5
    obs = {"state": torch.full((1, 2, 18), 256.0)}
    assert policy.predict_action(obs).shape == (1, 8, 2)


def test_training_resumes_where_it_stopped(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    common = ["--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "8", "--log-every", "5",
              "--val-episodes", "0", *SMALL]
    train(build_parser().parse_args([*common, "--steps", "10"]))
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)
    assert state["step"] == 10
    train(build_parser().parse_args([*common, "--steps", "20"]))
    rows = _rows(tmp_path / "run" / "log.csv")
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]  # continued, no duplicate rows
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)["step"] == 20
    with pytest.raises(UserError):  # a different architecture cannot resume this run
        train(build_parser().parse_args([*common, "--steps", "30", "--down-dims", "8,16"]))
    with pytest.raises(UserError, match="other data or optimization options .*--batch-size: 8 there, 16 here"):
        train(build_parser().parse_args([*common, "--steps", "30", "--batch-size", "16"]))
    other = _demo_store(tmp_path / "other.zarr", n_episodes=3, length=24, seed=5)  # it resumed on it, old normalizers
    with pytest.raises(UserError, match=r"--data: \['demo.zarr: 3 episodes, 72 steps'\] there, \['other.zarr: 3 episodes, 72 "
                                        r"steps'\] here"):
        train(build_parser().parse_args([*common, "--steps", "30", "--data", str(other)]))
    meta = json.loads((tmp_path / "run" / "policy.json").read_text())["meta"]
    assert meta["samples_seen"] == 20 * 8
    shutil.copytree(data, tmp_path / "moved" / "demo.zarr")  # the same store elsewhere (another machine): resumes
    train(build_parser().parse_args([*common, "--steps", "25", "--data", str(tmp_path / "moved" / "demo.zarr")]))
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)["step"] == 25
    (tmp_path / "run" / "train_state.pt").unlink()  # a finished run's folder without its state: not a new run
    with pytest.raises(UserError, match="holds a policy but no training state"):
        train(build_parser().parse_args([*common, "--steps", "5"]))


def test_checkpoints_by_the_clock_do_not_change_what_is_trained(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    common = ["--data", str(data), "--batch-size", "8", "--log-every", "2", "--val-episodes", "1", "--steps", "8",
              *SMALL]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "rare"), "--checkpoint-every", "1000"]))
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "often"), "--checkpoint-every", "1e-9"]))
    losses = [[r["loss"] for r in _rows(tmp_path / run / "log.csv")] for run in ("rare", "often")]
    assert losses[0] == losses[1]


def test_a_time_budgeted_run_resumed_after_its_schedule_stops_at_once(tmp_path, capsys):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    run = ["--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "8", "--max-seconds", "1",
           "--log-every", "1000", "--val-episodes", "0", *SMALL]
    train(build_parser().parse_args(run))
    done = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)["step"]
    assert done > 0
    capsys.readouterr()
    trained = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)["elapsed"]
    train(build_parser().parse_args(run))  # the cosine LR reached 0: no steps wasted at LR 0, and the reason said
    again = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)
    assert again["step"] == done and again["elapsed"] == trained  # the call's set-up seconds are no training time
    assert "schedule (1 s) is complete: nothing to train" in capsys.readouterr().out


def test_init_takes_network_and_normalizers_from_the_checkpoint(tmp_path, capsys):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    common = ["--data", str(data), "--batch-size", "8", "--val-episodes", "0", "--threads", "1", "--device", "cpu"]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "a"), "--steps", "2", "--down-dims", "16,32",
                                     "--cpu-weights", "int8", "--inference-steps", "5", "--ddim-eta", "1"]))
    first = load_policy(tmp_path / "a" / "policy.pt")
    # the model options given here (default widths) are ignored: the run continues the checkpoint's network
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "b"), "--steps", "0",
                                     "--init", str(tmp_path / "a" / "policy.pt"), "--sampler", "ddim_trailing"]))
    second = load_policy(tmp_path / "b" / "policy.pt")
    assert second.config.down_dims == (16, 32) and second.config.sampler == "ddim_trailing"
    assert first.config.cpu_weights == second.config.cpu_weights == "int8"  # inherited unless given
    assert (second.config.num_inference_steps, second.config.ddim_eta) == (5, 1.0)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    wide = _demo_store(tmp_path / "wide.zarr", n_episodes=3, length=24)  # actions beyond the checkpoint's range
    buf = ReplayBuffer.open(wide, mode="a")
    buf.root["data/action"][:] = buf.root["data/action"][:] * 3
    capsys.readouterr()
    train(build_parser().parse_args([*common, "--data", str(wide), "--out", str(tmp_path / "w"), "--steps", "0",
                                     "--init", str(tmp_path / "a" / "policy.pt")]))
    err = capsys.readouterr().err
    assert "the data's actions reach beyond the range its normalizers were fitted on" in err
    assert "observations reach beyond" not in err  # the same states: said only where it happens
    with pytest.raises(UserError, match="expects state observations"):  # image data cannot continue a state policy
        images = _demo_store(tmp_path / "img.zarr", n_episodes=2, length=20, images=True)
        train(build_parser().parse_args(["--data", str(images), "--obs-type", "image", "--out", str(tmp_path / "c"),
                                         "--steps", "1", "--batch-size", "4", "--val-episodes", "0", "--device", "cpu",
                                         "--init", str(tmp_path / "a" / "policy.pt")]))


def test_image_policy_trains_end_to_end(tmp_path):
    data = _demo_store(tmp_path / "img.zarr", n_episodes=2, length=20, images=True)
    summary = train(build_parser().parse_args(
        ["--data", str(data), "--obs-type", "image", "--out", str(tmp_path / "run"), "--steps", "3",
         "--batch-size", "4", "--log-every", "1", "--val-episodes", "1", *SMALL]))
    assert np.isfinite(summary["val_loss"])
    policy = load_policy(tmp_path / "run" / "policy.pt")
    assert policy.config.obs_type == "image" and policy.encoder is not None
    obs = {"agent_pos": torch.full((1, 2, 2), 200.0), "image": torch.zeros(1, 2, 3, 96, 96, dtype=torch.uint8)}
    assert policy.predict_action(obs).shape == (1, 8, 2)


def test_encoder_lr_scale_zero_freezes_the_image_encoder(tmp_path):
    data = _demo_store(tmp_path / "img.zarr", n_episodes=2, length=20, images=True)
    common = ["--data", str(data), "--obs-type", "image", "--batch-size", "4", "--val-episodes", "0", "--lr", "1e-2",
              "--warmup-steps", "1", "--ema-power", "0.01", *SMALL]  # EMA decay ~0.02: it follows the weights
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "a"), "--steps", "1"]))
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "b"), "--steps", "5", "--encoder-lr-scale", "0",
                                     "--init", str(tmp_path / "a" / "policy.pt")]))
    before, after = (load_policy(tmp_path / d / "policy.pt").state_dict() for d in "ab")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(not k.startswith("encoder.") for k in changed), sorted(changed)[:5]


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=2, length=20)

    def broken_compile(self, *args, **kwargs):  # what an unsupported backend looks like at the first call
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")
        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    summary = train(build_parser().parse_args(
        ["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "4", "--batch-size", "4", "--log-every", "2",
         "--val-episodes", "0", "--compile", *SMALL]))
    assert summary["step"] == 4


@pytest.mark.slow
def test_torch_compile_runs_on_cpu(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=2, length=20)
    summary = train(build_parser().parse_args(
        ["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "4", "--batch-size", "4", "--log-every", "2",
         "--val-episodes", "0", "--compile", *SMALL]))
    assert summary["step"] == 4


def test_lr_schedule_warms_up_then_decays():
    assert lr_at(0.0, 0, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(0.0, 50, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(0.5, 50, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(1.2, 50, 1.0, 10) == pytest.approx(0.0)


def test_train_needs_a_budget(tmp_path):
    with pytest.raises(UserError):
        train(build_parser().parse_args(["--out", str(tmp_path / "run")]))


def test_extra_demonstrations_train_and_validation_stays_on_data(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr")
    extra = _demo_store(tmp_path / "extra.zarr", n_episodes=3, seed=1)
    args = build_parser().parse_args(["--data", str(data), "--extra-data", str(extra), "--out", str(tmp_path / "run"),
                                      "--steps", "5", "--batch-size", "8", "--val-episodes", "1", *SMALL])
    train(args)
    meta = json.loads((tmp_path / "run" / "policy.json").read_text())["meta"]
    policy = load_policy(tmp_path / "run" / "policy.pt")
    assert policy.config.extra["train_episodes"] == 5 + 3 and max(policy.config.extra["val_episodes"]) < 6
    assert meta["extra_data"] == [str(extra)] and f"--extra-data {extra}" in meta["command"]


def test_cli_train_reports_bad_data_in_one_line(tmp_path, capsys):
    from sciddiff.cli import main

    assert main(["policy", "train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "none.zarr"),
                 "--steps", "1"]) == 2
    assert capsys.readouterr().err.strip() == f"sciddiff policy: error: no dataset at {tmp_path / 'none.zarr'}"


@pytest.mark.parametrize("options, message", [
    (["--lr", "nan"], "--lr must be a finite number >= 0"),
    (["--lr", "-1"], "--lr must be a finite number >= 0"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0"),
    (["--max-seconds", "nan"], "--max-seconds must be a finite number > 0"),
    (["--max-seconds", "inf"], "--max-seconds must be a finite number > 0"),
    (["--schedule-seconds", "-5", "--max-seconds", "2"], "--schedule-seconds must be a finite number > 0"),
    (["--max-train-episodes", "0"], "--max-train-episodes must be at least 1"),
    (["--max-train-episodes", "-3"], "--max-train-episodes must be at least 1"),
    (["--down-dims", "abc"], "--down-dims must be comma-separated positive multiples of 8"),
    (["--down-dims", "0"], "--down-dims must be comma-separated positive multiples of 8"),
    (["--down-dims", "12,24"], "--down-dims must be comma-separated positive multiples of 8"),
    (["--inference-steps", "0"], "--inference-steps must be at least 1"),
    (["--warmup-steps", "-5"], "--warmup-steps must be at least 0"),
    (["--inference-steps", "500"], "--inference-steps must be at most 100"),
    (["--eval-every", "-1"], "--eval-every must be at least 0"),
    (["--eval-every", "2", "--eval-episodes", "0"], "--eval-episodes must be at least 1"),
    (["--checkpoint-every", "nan"], "--checkpoint-every must be a finite number of seconds > 0"),
    (["--seed", "-1"], "--seed must be at least 0"),
    (["--device", "cuda:7"], "--device cuda:7 requested but"),
    (["--device", "tpu"], "--device tpu: not a torch device"),
])
def test_bad_option_values_are_refused_before_any_run_folder(tmp_path, options, message):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    args = ["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
            "--val-episodes", "1", *SMALL, *options]  # later options win: --down-dims overrides SMALL's
    with pytest.raises(UserError, match="^" + re.escape(message)):
        train(build_parser().parse_args(args))
    assert not (tmp_path / "run").exists()


def test_lr_zero_is_kept_not_replaced_by_the_default(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    train(build_parser().parse_args(["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
                                     "--batch-size", "4", "--val-episodes", "1", "--lr", "0", *SMALL]))
    assert json.loads((tmp_path / "run" / "policy.json").read_text())["meta"]["lr"] == 0


def test_bad_data_leaves_no_run_folder(tmp_path):
    import zarr

    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    short = _demo_store(tmp_path / "short.zarr", n_episodes=3, length=5)  # windows need 8 steps
    empty = tmp_path / "empty.zarr"
    root = ReplayBuffer.create(empty).root
    root["data"].create_array("state", shape=(0, 5), dtype="float32")
    root["data"].create_array("action", shape=(0, 2), dtype="float32")
    wide = _demo_store(tmp_path / "wide.zarr", n_episodes=2, length=24)
    root = zarr.open_group(str(wide), mode="a")
    action = np.concatenate([root["data/action"][:], np.zeros((48, 1), np.float32)], 1)
    del root["data/action"]
    root["data"].create_array("action", data=action)  # 3-D actions: not PushT's
    common = ["--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--val-episodes", "1", *SMALL]
    for data_options, message in [
        (["--data", str(short)], "no training windows: 3 episode(s) shorter than the 8 steps a training window needs"),
        (["--data", str(data), "--extra-data", str(empty), str(data)], f"{empty} holds no episodes"),
        (["--data", str(data), "--extra-data", str(wide)], f"{wide}: data/action has shape (48, 3); PushT needs"),
    ]:
        with pytest.raises(UserError, match="^" + re.escape(message)):
            train(build_parser().parse_args([*data_options, *common]))
        assert not (tmp_path / "run").exists()


def test_short_episodes_among_long_ones_are_warned_about_not_refused(tmp_path, capsys):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    short = _demo_store(tmp_path / "short.zarr", n_episodes=2, length=5)
    train(build_parser().parse_args(["--data", str(data), "--extra-data", str(short), "--out", str(tmp_path / "run"),
                                     "--steps", "1", "--batch-size", "4", "--val-episodes", "1", *SMALL]))
    assert "warning: 2 episode(s) shorter than the 8 steps" in capsys.readouterr().err


def test_a_bad_state_file_is_named_as_state_and_leaves_no_run_folder(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    common = ["--data", str(data), "--steps", "1", "--batch-size", "4", "--val-episodes", "1", *SMALL]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "ok")]))
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    for state, message in [(tmp_path / "notes.pt", "not a torch checkpoint file"),
                           (tmp_path / "ok" / "policy.pt", "no 'model' entry")]:  # a policy, not a training state
        with pytest.raises(UserError, match="^--state: " + re.escape(f"{state} is not a policy training state")) as err:
            train(build_parser().parse_args([*common, "--out", str(tmp_path / "run"), "--state", str(state)]))
        assert message in str(err.value) and not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=r"^--state .* different configuration \(down_dims: \(16, 32\) there, "
                                        r"\(8, 16\) here"):  # a state of another network; the option that differs
        train(build_parser().parse_args([*common, "--out", str(tmp_path / "run"), "--down-dims", "8,16",
                                         "--state", str(tmp_path / "ok" / "train_state.pt")]))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_the_training_state_and_exits_as_interrupted(tmp_path, monkeypatch, capsys, sig):
    from sciddiff.policy import train as train_module
    from sciddiff.policy.train import main

    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    sample, calls = train_module.Batches.sample, []

    def sample_then_signal(self, batch_size):
        calls.append(batch_size)
        if len(calls) == 4:  # inside the 4th optimizer step
            os.kill(os.getpid(), sig)
        return sample(self, batch_size)

    monkeypatch.setattr(train_module.Batches, "sample", sample_then_signal)
    # without the trainer's own handler SIGTERM would end pytest: here it interrupts as Ctrl-C does; SIGINT set too,
    # as a background job may start with it ignored (which the trainer respects)
    before = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--steps", "30", "--batch-size", "4",
                "--val-episodes", "0", "--log-every", "100", "--checkpoint-every", "1000", *SMALL]
        assert main(argv) == (143 if sig == signal.SIGTERM else 130)  # 128 + the signal, as a shell reports it
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler  # the trainer's handlers are gone
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert f"{signal.Signals(sig).name} at step 4: saved" in err
    assert err.strip().endswith("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted")
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 4
    assert load_policy(tmp_path / "run" / "policy.pt").meta["step"] == 4
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert main([*argv[:5], "6", *argv[6:]]) == 0  # --steps 6: the same run resumes at step 4
    assert "resuming from step 4" in capsys.readouterr().out
    assert torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)["step"] == 6


def test_example_trains_with_its_threads_and_a_finite_budget(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location(
        "pusht_example", Path(__file__).resolve().parents[1] / "examples" / "diffusion_policy_pusht.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    seen = []

    def fake_train(args):
        seen.append(args)
        raise UserError("stop here")

    monkeypatch.setattr("sciddiff.policy.train.train", fake_train)
    common = ["--train", "--gif", str(tmp_path / "a.gif"), "--plot", str(tmp_path / "a.png"),
              "--train-out", str(tmp_path / "run")]
    assert example.main([*common, "--threads", "1"]) == 2 and seen[0].threads == 1
    for budget in ("nan", "inf", "0"):
        assert example.main([*common, "--train-seconds", budget]) == 2
    assert len(seen) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: --train-seconds must be a finite number > 0"


def test_average_of_two_fine_tunes_is_their_midpoint(tmp_path, capsys):
    from sciddiff.policy.average import main as average

    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    common = ["--data", str(data), "--batch-size", "8", "--val-episodes", "0", "--threads", "1", "--device", "cpu"]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "a"), "--steps", "2", "--down-dims", "16,32",
                                     "--ddim-eta", "1"]))
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "b"), "--steps", "3", "--lr", "1e-2",
                                     "--init", str(tmp_path / "a" / "policy.pt")]))
    paths = [str(tmp_path / d / "policy.pt") for d in "ab"]
    assert average([*paths, "--out", str(tmp_path / "soup.pt")]) == 0
    a, b, soup = (load_policy(p) for p in [*paths, tmp_path / "soup.pt"])
    key = next(k for k in a.state_dict() if k.startswith("unet.") and not torch.equal(a.state_dict()[k], b.state_dict()[k]))
    mid = (a.state_dict()[key] + b.state_dict()[key]) / 2
    assert torch.allclose(soup.state_dict()[key], mid, atol=2e-3)  # fp16 storage
    assert soup.config.ddim_eta == 1.0 and soup.meta["average_of"] == paths
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "c"), "--steps", "1", "--down-dims", "8,16"]))
    assert average([paths[0], str(tmp_path / "c" / "policy.pt"), "--out", str(tmp_path / "bad.pt")]) == 2
    assert "not the same network" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()


def test_distillation_starts_from_the_teacher_and_keeps_its_sampler(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    common = ["--data", str(data), "--batch-size", "8", "--val-episodes", "0", "--threads", "1", "--device", "cpu"]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "t"), "--steps", "20", "--lr", "3e-3",
                                     "--down-dims", "16,32", "--sampler", "ddim_trailing", "--inference-steps", "8",
                                     "--ddim-eta", "1"]))
    teacher_path = str(tmp_path / "t" / "policy.pt")
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "s"), "--steps", "10", "--lr", "1e-3",
                                     "--log-every", "5", "--distill-from", teacher_path, "--inference-steps", "4"]))
    teacher, student = load_policy(teacher_path), load_policy(tmp_path / "s" / "policy.pt")
    assert student.config.down_dims == (16, 32) and student.config.num_inference_steps == 4
    assert (student.config.sampler, student.config.ddim_eta) == ("ddim_trailing", 1.0)
    assert all(np.isfinite(float(r["loss"])) for r in _rows(tmp_path / "s" / "log.csv"))
    assert not torch.equal(student.state_dict()["unet.final.1.weight"], teacher.state_dict()["unet.final.1.weight"])
    assert torch.equal(student.state_dict()["action_normalizer.high"], teacher.state_dict()["action_normalizer.high"])
    assert f"--distill-from {teacher_path}" in student.meta["command"]
    with pytest.raises(UserError, match="--inference-steps"):
        train(build_parser().parse_args([*common, "--out", str(tmp_path / "x"), "--steps", "1",
                                         "--distill-from", teacher_path]))
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "lead"), "--steps", "1", "--down-dims", "16,32",
                                     "--sampler", "ddim"]))
    with pytest.raises(UserError, match="does not contain"):  # leading grids: 0, 12, ..., 84 vs 0, 25, 50, 75
        train(build_parser().parse_args([*common, "--out", str(tmp_path / "x"), "--steps", "1", "--distill-from",
                                         str(tmp_path / "lead" / "policy.pt"), "--inference-steps", "4"]))
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "renoise"), "--steps", "1", "--down-dims",
                                     "16,32", "--sampler", "ddim_trailing", "--ddim-eta", "inf"]))
    with pytest.raises(UserError, match="eta in \\[0, 1\\]"):  # the two-step target is DDIM's, not re-noising's
        train(build_parser().parse_args([*common, "--out", str(tmp_path / "x"), "--steps", "1", "--distill-from",
                                         str(tmp_path / "renoise" / "policy.pt"), "--inference-steps", "4"]))
    assert not (tmp_path / "x").exists()


def test_training_runs_data_parallel_under_torchrun_and_resumes(tmp_path):
    data = _demo_store(tmp_path / "demo.zarr", n_episodes=3, length=24)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--data", str(data), "--out", str(tmp_path / "run"), "--batch-size", "4", "--log-every", "3",
               "--val-episodes", "0", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def run(steps: int) -> subprocess.CompletedProcess:
        proc = subprocess.run([*command, "--steps", str(steps)], env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    run(6)
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "log.csv")] == [3, 6]  # rank 0 alone logs
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=False)
    assert state["step"] == 6 and len(state["rng"]) == 2  # each process's RNG, for an exact resume
    assert load_policy(tmp_path / "run" / "policy.pt").meta["processes"] == 2
    weights = [torch.load(tmp_path / "run" / f"rank{r}_weights.pt") for r in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(*weights))  # different batches, gradients averaged: same weights
    proc = run(9)
    assert proc.stdout.count("resuming from step 6") == 1
    assert [int(r["step"]) for r in _rows(tmp_path / "run" / "log.csv")] == [3, 6, 9]


def _torchrun_worker(argv: list[str]) -> None:
    """Train as `python -m sciddiff.policy.train` does, then save this process's live weights beside the run."""
    from sciddiff.policy import train as train_module

    wrapped, wrap = [], train_module.distributed.wrap
    train_module.distributed.wrap = lambda model: wrapped.append(model) or wrap(model)
    args = build_parser().parse_args(argv)
    train(args)
    torch.save([q.detach() for q in wrapped[0].parameters()], args.out / f"rank{os.environ['RANK']}_weights.pt")


if __name__ == "__main__":
    _torchrun_worker(sys.argv[1:])


def _example(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_generic_store_with_other_keys_trains_on_the_arrays_named(tmp_path):
    """A store that keeps the observation in several arrays (keypoint (N, 9, 2), agent_pos (N, 2)): --obs-keys
    flattens and concatenates them in the order named; the keys go with the policy and `prepare`."""
    from sciddiff.policy.data import GenericKeys, prepare_dataset

    rng = np.random.default_rng(0)
    store = ReplayBuffer.create(tmp_path / "chi.zarr")
    for _ in range(3):
        store.add_episode({"keypoint": rng.normal(size=(20, 9, 2)).astype(np.float32),
                           "agent_pos": rng.normal(size=(20, 2)).astype(np.float32),
                           "action": rng.normal(size=(20, 2)).astype(np.float32)})
    common = ["--task", "generic", "--data", str(tmp_path / "chi.zarr"), "--steps", "2", "--batch-size", "8",
              "--val-episodes", "1", *SMALL]
    train(build_parser().parse_args([*common, "--out", str(tmp_path / "run"), "--obs-keys", "keypoint", "agent_pos"]))
    policy = load_policy(tmp_path / "run" / "policy.pt")
    assert (policy.config.state_dim, policy.config.action_dim) == (20, 2)
    assert policy.config.extra["obs_keys"] == ["keypoint", "agent_pos"] and policy.config.extra["action_key"] == "action"
    npz = prepare_dataset(tmp_path / "chi.zarr", tmp_path / "chi.npz", "state", "generic", GenericKeys(("keypoint", "agent_pos")))
    with np.load(npz) as f:
        assert f["state"].shape == (60, 20) and np.array_equal(f["state"][:, 18:], store.load(["agent_pos"])[0]["agent_pos"])
    with pytest.raises(UserError, match="holds the arrays `policy prepare` made"):  # they were ignored, and recorded
        train(build_parser().parse_args([*common[:3], str(npz), *common[4:], "--out", str(tmp_path / "bad"),
                                         "--obs-keys", "keypoint", "agent_pos"]))
    with pytest.raises(UserError, match=r"no key\(s\) \['kp'\]"):
        train(build_parser().parse_args([*common, "--out", str(tmp_path / "bad"), "--obs-keys", "kp"]))
    with pytest.raises(UserError, match="name a generic task's arrays"):
        train(build_parser().parse_args(["--out", str(tmp_path / "bad"), "--obs-keys", "state", "--steps", "1"]))
    assert not (tmp_path / "bad").exists()


def test_a_generic_gymnasium_task_trains_from_its_raw_vectors_and_evaluates_in_its_env(tmp_path, capsys):
    from sciddiff.policy.cli import register  # noqa: F401  (the eval command below)
    from sciddiff.cli import main as cli_main

    custom = _example("diffusion_policy_custom_env")
    demos = custom.write_demos(tmp_path / "mc.zarr", 4, 10000)  # MountainCarContinuous-v0: (position, velocity) -> force
    assert demos["reached_goal"] == 4
    args = build_parser().parse_args(["--task", "generic", "--env", custom.ENV_ID, "--data", str(tmp_path / "mc.zarr"),
                                      "--out", str(tmp_path / "run"), "--steps", "30", "--batch-size", "16",
                                      "--val-episodes", "1", "--inference-steps", "4", *SMALL])
    train(args)
    policy = load_policy(tmp_path / "run" / "policy.pt")
    assert (policy.config.state_dim, policy.config.action_dim) == (2, 1)
    assert policy.config.extra["task"] == "generic" and policy.config.extra["env"] == custom.ENV_ID
    out = tmp_path / "m.json"
    assert cli_main(["policy", "eval", "--checkpoint", str(tmp_path / "run" / "policy.pt"), "--episodes", "2",
                     "--seed", "3", "--max-steps", "40", "--threads", "1", "--per-episode",
                     "--metrics-json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["env"] == custom.ENV_ID and "mean_max_coverage" not in metrics and metrics["episodes"] == 2
    assert metrics["max_steps"] == 40  # a short run's file says so (it looked like a benchmark's)
    assert [row["steps"] for row in metrics["per_episode"]] == [40, 40]  # 40 steps cannot climb the hill
    rewards = [row["episode_return"] for row in metrics["per_episode"]]
    assert all(-40 <= r < 0 for r in rewards)  # MountainCar's control cost: -0.1 a^2 per step, no goal bonus
    capsys.readouterr()
    # PushT options, and PushT data without --task generic, are refused in one line
    assert cli_main(["policy", "eval", "--checkpoint", str(tmp_path / "run" / "policy.pt"), "--env-obs-type",
                     "state"]) == 2
    assert "--env-obs-type is for PushT policies" in capsys.readouterr().err
    (tmp_path / "norender_envs.py").write_text(  # the same task without rgb_array frames: --video is refused up front
        "import gymnasium as gym\n"
        "from gymnasium.envs.classic_control.continuous_mountain_car import Continuous_MountainCarEnv\n"
        "class NoRender(Continuous_MountainCarEnv):\n    metadata = {'render_modes': [], 'render_fps': 30}\n"
        "gym.register('NoRender-v0', entry_point=NoRender, max_episode_steps=999)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert cli_main(["policy", "eval", "--checkpoint", str(tmp_path / "run" / "policy.pt"), "--env",
                         "norender_envs:NoRender-v0", "--episodes", "1", "--video", str(tmp_path / "v.mp4")]) == 2
    finally:
        sys.path.remove(str(tmp_path))
    assert "--video: norender_envs:NoRender-v0 renders no rgb_array frames" in capsys.readouterr().err
    with pytest.raises(UserError, match="--task generic"):
        train(build_parser().parse_args(["--data", str(tmp_path / "mc.zarr"), "--out", str(tmp_path / "r2"),
                                         "--steps", "2", *SMALL]))
    with pytest.raises(UserError, match="--eval-every with --task generic needs --env"):
        train(build_parser().parse_args(["--task", "generic", "--data", str(tmp_path / "mc.zarr"), "--out",
                                         str(tmp_path / "r3"), "--steps", "2", "--eval-every", "1",
                                         "--val-episodes", "1", *SMALL]))
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
