"""Env runner (PushT and a generic gymnasium env) with stub policies, metrics, GIF, and the CLI / example surface."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gym_pusht")

from sciddiff.policy import pusht  # noqa: E402
from sciddiff.policy.data import default_zarr  # noqa: E402
from sciddiff.policy.io import load_policy, save_policy  # noqa: E402
from sciddiff.policy.policy import DiffusionPolicy, PolicyConfig  # noqa: E402
from sciddiff.policy.runner import EnvAdapter, PushTAdapter, run_episodes, summarize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class RecordingStub:
    """Pushes toward a fixed point; records what it was shown."""

    def __init__(self, target=(256.0, 256.0), chunk=8):
        self.target, self.chunk, self.calls = np.asarray(target), chunk, []

    def __call__(self, obs):
        self.calls.append({k: v.copy() for k, v in obs.items()})
        b = next(iter(obs.values())).shape[0]
        return np.broadcast_to(self.target, (b, self.chunk, 2)).copy()


def test_pusht_episode_with_stub_policy(tmp_path):
    stub = RecordingStub()
    adapter = PushTAdapter("environment_state_agent_pos", max_steps=40)
    results = run_episodes(stub, adapter, seeds=[3, 4, 5], batch_size=2, video_path=tmp_path / "ep.gif",
                           show_progress=False)
    assert [r.seed for r in results] == [3, 4, 5]
    for r in results:
        assert r.steps == 40  # 5 chunks of 8; a stub never reaches 95% coverage
        assert 0.0 <= r.max_score <= 1.0 and not r.success
        assert r.max_reward == pytest.approx(min(r.max_score / 0.95, 1.0), abs=1e-6)
    # first call: both envs of the first batch, reset observation repeated over the 2-step history
    first = stub.calls[0]["state"]
    assert first.shape == (2, 2, pusht.STATE_FEATURE_DIM) and np.array_equal(first[:, 0], first[:, 1])
    # next call sees the observations 7 and 8 steps later (the last two of the executed chunk): they differ
    assert not np.array_equal(stub.calls[1]["state"][:, 0], stub.calls[1]["state"][:, 1])
    assert len(stub.calls) == 5 + 5  # two lockstep groups, 5 chunks each
    gif = tmp_path / "ep.gif"
    assert gif.exists() and gif.stat().st_size > 1000
    import imageio.v2 as imageio
    assert 5 < len(imageio.mimread(gif)) <= 41  # reset frame + 40 steps (the GIF writer merges identical frames)
    m = summarize(results)
    assert m["episodes"] == 3 and m["success_rate"] == 0.0
    assert m["mean_max_coverage"] == pytest.approx(np.mean([r.max_score for r in results]))


def test_rollout_video_is_a_gif_or_an_h264_mp4_written_atomically(tmp_path):
    import imageio.v2 as imageio

    from sciddiff.policy.runner import write_video

    frames = [np.full((64, 80, 3), 12 * i, np.uint8) for i in range(12)]  # changing frames: none merged
    write_video(tmp_path / "a.gif", frames)
    write_video(tmp_path / "a.mp4", frames, fps=10)
    assert len(imageio.mimread(tmp_path / "a.gif")) == 12
    with imageio.get_reader(tmp_path / "a.mp4") as video:
        meta = video.get_meta_data()
        assert meta["codec"] == "h264" and meta["fps"] == 10 and video.count_frames() == 12
        assert video.get_data(11).shape == (64, 80, 3)
        assert abs(float(video.get_data(11).mean()) - 132) < 3  # the last frame's grey level survives the codec
    write_video(tmp_path / "odd.mp4", [f[:63, :79] for f in frames])  # odd sides: padded by a pixel, not resized
    with imageio.get_reader(tmp_path / "odd.mp4") as video:
        assert video.get_data(0).shape == (64, 80, 3)
    (tmp_path / "odd.mp4").unlink()
    with pytest.raises(ValueError, match=".gif, .mp4"):
        write_video(tmp_path / "a.avi", frames)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.gif", "a.mp4"]  # no temporary file left


def test_success_ends_the_episode_and_counts():
    class Solved(PushTAdapter):  # pretend every step covers the goal: success + early termination path
        def score(self, reward, info):
            return 1.0

        def is_success(self, max_score, terminated):
            return max_score > pusht.SUCCESS_COVERAGE

    results = run_episodes(RecordingStub(), Solved("state", max_steps=16), seeds=[0], show_progress=False)
    assert results[0].success and results[0].max_score == 1.0


def test_runner_drives_any_gymnasium_env():
    # Pendulum-v1: Box observation (cos, sin, angular velocity), 1-D torque action, truncates at max_steps.
    adapter = EnvAdapter("Pendulum-v1", max_steps=20)
    calls = []

    def policy(obs):
        calls.append(obs["state"].shape)
        return np.zeros((obs["state"].shape[0], 4, 1), dtype=np.float32)

    results = run_episodes(policy, adapter, seeds=[0, 1], batch_size=2, show_progress=False)
    assert [r.steps for r in results] == [20, 20] and calls[0] == (2, 2, 3) and len(calls) == 5
    assert all(r.max_reward <= 0 for r in results)  # Pendulum rewards are negative costs
    assert all(r.episode_return <= 20 * r.max_reward for r in results)  # the return sums 20 costs, each <= the max
    m = summarize(results, adapter.score_name)
    assert "mean_max_coverage" not in m and m["mean_return"] == pytest.approx(np.mean([r.episode_return for r in results]))
    assert m["success_rate"] == 0  # Pendulum only truncates; success needs a threshold on the score
    results = run_episodes(policy, EnvAdapter("Pendulum-v1", max_steps=20, success_score=-20.0), seeds=[0, 1],
                           show_progress=False)
    assert [r.success for r in results] == [r.max_score >= -20.0 for r in results]
    assert EnvAdapter("Pendulum-v1", max_steps=None).max_steps == 200  # the env's registered limit


def test_frames_of_a_pygame_env_on_a_headless_machine_print_no_sdl_error():
    # gymnasium's classic-control envs open pygame's display even for rgb_array frames: SDL printed "error:
    # XDG_RUNTIME_DIR is invalid or not set" in the middle of a successful run (the custom-env example's video)
    code = ("from sciddiff.policy.runner import EnvAdapter\n"
            "env = EnvAdapter('MountainCarContinuous-v0').make_env(render=True)\n"
            "env.reset(seed=0)\nprint(env.render().shape)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR",
                                                              "SDL_VIDEODRIVER")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "(400, 600, 3)", proc.stderr[-2000:]
    assert "error" not in proc.stderr.lower(), proc.stderr


def test_stateful_policy_is_reset_per_batch_and_told_its_environments():
    class Stateful(RecordingStub):
        def __init__(self):
            super().__init__()
            self.log = []

        def reset(self, seeds):
            self.log.append(list(seeds))

        def __call__(self, obs, env_ids):
            self.log.append(list(env_ids))
            return super().__call__(obs)

    stub = Stateful()
    run_episodes(stub, PushTAdapter("environment_state_agent_pos", max_steps=16), seeds=[3, 4, 5], batch_size=2,
                 show_progress=False)
    assert stub.log == [[3, 4], [0, 1], [0, 1], [5], [0], [0]]  # reset with the batch's seeds, then env ids


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(down_dims=(16, 32), step_embed_dim=16, num_inference_steps=2))
    from sciddiff.policy.normalizer import MinMaxNormalizer
    policy.state_normalizer.load_state_dict(MinMaxNormalizer.fit(np.array([[0.0] * 18, [512.0] * 18])).state_dict())
    policy.action_normalizer.load_state_dict(MinMaxNormalizer.fit(np.array([[0.0, 0.0], [512.0, 512.0]])).state_dict())
    return save_policy(tmp_path_factory.mktemp("ckpt") / "tiny.pt", policy, {"command": "test"})


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, **kw)


def test_example_writes_metrics_json(tmp_path, tiny_checkpoint):
    out = tmp_path / "m.json"
    proc = _run(["examples/diffusion_policy_pusht.py", "--episodes", "2", "--seed", "7", "--metrics-json", str(out),
                 "--checkpoint", str(tiny_checkpoint), "--video", str(tmp_path / "r.mp4"), "--inference-steps", "3",
                 "--plot", str(tmp_path / "e.png")])
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    keys = {"mean_max_reward", "mean_max_coverage", "success_rate", "episodes", "seconds_per_action_chunk"}
    assert keys <= set(metrics)
    assert metrics["episodes"] == 2 and 0 < metrics["seconds_per_action_chunk"] < 5
    assert metrics["inference_steps"] == 3  # the checkpoint's own is 2
    assert "mean max coverage" in proc.stdout
    import imageio.v2 as imageio
    with imageio.get_reader(tmp_path / "r.mp4") as video:  # H.264: every env step of the first episode a frame
        assert video.get_meta_data()["codec"] == "h264" and video.count_frames() > 10
    assert (tmp_path / "e.png").read_bytes().startswith(b"\x89PNG")


def test_example_refuses_bad_seeds_and_output_names_before_the_episodes(tmp_path, tiny_checkpoint, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pusht_example", REPO / "examples" / "diffusion_policy_pusht.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    good = ["--checkpoint", str(tiny_checkpoint), "--gif", str(tmp_path / "r.gif"), "--plot", str(tmp_path / "e.png")]
    for bad, message in ((["--seed", "-1"], "--seed must be in 0.."), (["--gif", str(tmp_path / "r")], "--video must"),
                         (["--plot", str(tmp_path / "e.jpg")], "--plot must name a .png file")):
        assert example.main([*good, *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (bad, err)
    assert list(tmp_path.iterdir()) == []


def test_cli_eval_threads_default_follows_the_load(tmp_path, tiny_checkpoint, monkeypatch):
    """Without --threads, eval takes one thread when another process is running: two evaluations side by side with
    torch's default two threads each ran 40x slower than with one thread each (docs/policy.md)."""
    from sciddiff.cli import main
    from sciddiff.policy import cli as policy_cli

    before = torch.get_num_threads()
    try:
        for idle, threads in ((1, 1), (2, 2)):
            monkeypatch.setattr(policy_cli, "idle_threads", lambda idle=idle: idle)
            assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1", "--inference-steps",
                         "1", "--metrics-json", str(tmp_path / "m.json")]) == 0
            assert json.loads((tmp_path / "m.json").read_text())["torch_threads"] == threads
    finally:
        torch.set_num_threads(before)


def test_cli_eval_and_errors(tmp_path, tiny_checkpoint, capsys):
    from sciddiff.cli import main

    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1", "--metrics-json",
                 str(tmp_path / "m.json"), "--inference-steps", "1", "--sampler", "dpmpp_2m", "--plot",
                 str(tmp_path / "e.png")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["sampler"] == "dpmpp_2m"
    assert (tmp_path / "e.png").read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main(["policy", "eval", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "no policy checkpoint" in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["policy", "eval", "--checkpoint", str(tmp_path / "junk.pt")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "junk.pt is not a policy checkpoint" in err
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "0"]) == 2
    for bad, message in ((["--batch-size", "0"], "--batch-size must be at least 1"),
                         (["--inference-steps", "-3"], "--inference-steps must be at least 1"),
                         (["--env-obs-type", "pixels_agent_pos"], "a state policy reads --env-obs-type"),
                         (["--metrics-json", str(tmp_path / "m.json" / "x.json")], "cannot be written"),
                         (["--video", str(tmp_path)], "--video"), (["--plot", str(tmp_path)], "--plot"),
                         # refused before the episodes, which used to fail in gymnasium / torch / the GIF writer
                         (["--seed", "-1"], "--seed must be in 0.."),
                         (["--seed", str(2**64 - 1)], "--seed must be in 0.."),  # seed + 1 does not fit
                         (["--video", str(tmp_path / "a.txt")], "--video must name a .gif or .mp4 file"),
                         (["--gif", str(tmp_path / "a")], "--video must name a .gif or .mp4 file"),
                         (["--plot", str(tmp_path / "a.xyz")], "--plot must name a .png file"),
                         (["--obs-type", "image"], "--obs-type image contradicts --checkpoint"),
                         (["--sampler", "ddpm", "--inference-steps", "10"], "the ddpm sampler takes all")):
        capsys.readouterr()
        assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "2", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and message in err, (bad, err)
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1", "--action-steps", "4",
                 "--inference-steps", "1", "--metrics-json", str(tmp_path / "m4.json")]) == 0
    assert json.loads((tmp_path / "m4.json").read_text())["action_steps"] == 4
    capsys.readouterr()
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--action-steps", "16"]) == 2
    assert "--action-steps must be in 1..15" in capsys.readouterr().err
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1", "--ddim-eta", "1",
                 "--inference-steps", "1", "--metrics-json", str(tmp_path / "eta.json")]) == 0
    assert json.loads((tmp_path / "eta.json").read_text())["ddim_eta"] == 1.0
    assert "steps, eta 1)" in capsys.readouterr().out  # the tiny policy samples with DDIM
    capsys.readouterr()
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1", "--ddim-eta", "inf",
                 "--inference-steps", "2", "--metrics-json", str(tmp_path / "renoise.json")]) == 0
    assert "steps, eta inf)" in capsys.readouterr().out  # DDIM re-noising
    for eta, sampler, message in (("-1", [], "--ddim-eta must be in [0, inf] for the ddim sampler"),
                                  ("nan", [], "--ddim-eta must be in [0, inf]"),
                                  ("2", ["--sampler", "dpmpp_2m"], "--ddim-eta must be in [0, 1] for the dpmpp_2m")):
        assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--ddim-eta", eta, *sampler]) == 2
        assert message in capsys.readouterr().err
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1", "--warm-start-t", "60",
                 "--inference-steps", "4", "--metrics-json", str(tmp_path / "warm.json")]) == 0
    warm = json.loads((tmp_path / "warm.json").read_text())  # DDIM leading, 4 steps: 75, 50, 25, 0
    assert (warm["warm_start_t"], warm["inference_steps"], warm["network_calls_per_chunk"]) == (60, 4, 3)
    assert "warm starts from t <= 60: 3 network calls" in capsys.readouterr().out
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--warm-start-t", "100"]) == 2
    assert "--warm-start-t must be in 0..99" in capsys.readouterr().err


def test_image_policy_drives_the_pixel_env():
    from sciddiff.policy.normalizer import MinMaxNormalizer
    from sciddiff.policy.runner import TorchPolicyActor

    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(obs_type="image", state_dim=2, down_dims=(16, 32), step_embed_dim=16,
                                          vision_channels=(8, 16), vision_keypoints=4, vision_dim=8,
                                          num_inference_steps=2))
    box = np.array([[0.0, 0.0], [512.0, 512.0]])
    policy.state_normalizer.load_state_dict(MinMaxNormalizer.fit(box).state_dict())
    policy.action_normalizer.load_state_dict(MinMaxNormalizer.fit(box).state_dict())
    results = run_episodes(TorchPolicyActor(policy.eval()), PushTAdapter("pixels_agent_pos", max_steps=16),
                           seeds=[0, 1], show_progress=False)
    assert [r.steps for r in results] == [16, 16]


def test_shipped_image_policy_sees_the_block():
    """The shipped image policy's encoder finds the T's 8 vertices in frames gym-pusht renders from random states."""
    from sciddiff.policy.io import load_policy
    from sciddiff.policy.normalizer import pixels_to_unit

    path = REPO / "data" / "policy" / "pusht_image.pt"
    if not path.exists():
        pytest.skip("no shipped image policy")
    policy = load_policy(path)
    frames, states = pusht.render_random_states(16, seed=123)
    with torch.no_grad():
        feats = policy.encoder(pixels_to_unit(torch.from_numpy(frames).permute(0, 3, 1, 2)))
    truth = pusht.state_features(states)[:, 2:].reshape(-1, 8, 2)
    # the encoder outputs the vertices as the state policy normalizes them
    state = load_policy(REPO / "data" / "policy" / "pusht_state.pt")
    lo, hi = state.state_normalizer.low[2:], state.state_normalizer.high[2:]
    pred = ((feats + 1) / 2 * (hi - lo) + lo).numpy().reshape(-1, 8, 2)
    error = np.linalg.norm(pred - truth, axis=-1).mean(-1)  # gym-pusht pixels per frame
    assert np.median(error) < 3.0 and error.max() < 10.0  # measured 0.64 / 1.7 px on 200 such frames


def test_recorded_states_follow_the_episode():
    from sciddiff.policy.runner import results_to_dicts

    adapter = PushTAdapter("state", max_steps=16)
    (r,) = run_episodes(RecordingStub(), adapter, seeds=[3], show_progress=False, record_states=True)
    assert r.states.shape == (17, 5)  # before each of the 16 actions and after the last
    env = adapter.make_env()
    env.reset(seed=3)
    assert np.allclose(r.states[0], pusht.env_state(env))
    for k, target in enumerate([(256.0, 256.0)] * 3):  # the stub's actions, replayed: the same states
        env.step(np.asarray(target, np.float32))
        assert np.allclose(r.states[k + 1], pusht.env_state(env))
    env.close()
    assert "states" not in results_to_dicts([r])[0]
    assert run_episodes(RecordingStub(), adapter, seeds=[3], show_progress=False)[0].states is None


def test_dagger_starts_the_planner_from_a_failed_episode(tmp_path, tiny_checkpoint, capsys):
    from sciddiff.policy.dagger import failure_start_states
    from sciddiff.policy.io import load_policy
    from sciddiff.policy.replay_buffer import ReplayBuffer
    from sciddiff.policy.scripted import main as demos

    starts, rollout = failure_start_states(load_policy(tiny_checkpoint), [7], [0, 8], show_progress=False)
    assert rollout["success_rate"] == 0.0  # an untrained policy
    assert [(s, t) for s, t, _ in starts] == [(7, 0), (7, 8)]
    env = PushTAdapter("state").make_env()
    env.reset(seed=7)
    assert np.allclose(starts[0][2], pusht.env_state(env)) and not np.allclose(starts[1][2], starts[0][2])
    env.close()
    out = tmp_path / "dagger.zarr"
    args = ["--from-policy", str(tiny_checkpoint), "--episodes", "1", "--seed", "7", "--restart-steps", "0,8",
            "--max-steps", "5", "--keep-failures", "--no-images", "--out", str(out)]
    assert demos(args) == 0
    buf = ReplayBuffer.open(out)
    assert buf.n_episodes == 2  # the planner's episodes start where the policy was at steps 0 and 8
    for k in range(2):
        assert np.allclose(buf.get_episode(k)["state"][0], starts[k][2], atol=1e-4)
    capsys.readouterr()
    assert demos(args) == 2  # the same restarts again: refused before the planner runs, nothing appended
    assert "already holds the episodes of seed(s) 7 " in capsys.readouterr().err
    assert ReplayBuffer.open(out).n_episodes == 2
    assert demos(args[:-2] + ["--restart-steps", "zero", "--out", str(tmp_path / "x.zarr")]) == 2
    assert "--restart-steps" in capsys.readouterr().err


def test_corrective_demos_are_known_by_the_state_they_land_in(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """Setting a state takes one physics step, which moves seed 1's reset block by ~0.05 px: the store's first row is
    where the episode landed, and the duplicate check must compare landed states (it compared requested ones)."""
    from sciddiff.policy import dagger
    from sciddiff.policy.replay_buffer import ReplayBuffer
    from sciddiff.policy.scripted import main as demos

    env = PushTAdapter("state").make_env()
    env.reset(seed=1)
    start = pusht.env_state(env)
    pusht.reset_to_state(env, start, 1)
    landed = pusht.env_state(env)
    env.close()
    assert not np.allclose(landed, start, atol=1e-3)  # the premise: the request and the stored row differ
    monkeypatch.setattr(dagger, "failure_start_states", lambda *a, **k: ([(1, 0, start)], {"success_rate": 0.0}))
    out = tmp_path / "dagger.zarr"
    args = ["--from-policy", str(tiny_checkpoint), "--episodes", "1", "--seed", "1", "--max-steps", "3",
            "--keep-failures", "--no-images", "--out", str(out)]
    assert demos(args) == 0
    assert np.allclose(ReplayBuffer.open(out).get_episode(0)["state"][0], landed, atol=1e-4)
    capsys.readouterr()
    assert demos(args) == 2 and "already holds the episodes of seed(s) 1 " in capsys.readouterr().err
    assert ReplayBuffer.open(out).n_episodes == 1


def test_eval_writes_the_states_it_visits(tmp_path, tiny_checkpoint):
    from sciddiff.policy.evaluate import evaluate_pusht
    from sciddiff.policy.io import load_policy

    metrics = evaluate_pusht(load_policy(tiny_checkpoint), 2, seed=5, show_progress=False, per_episode=True,
                             states_out=tmp_path / "states.npz")
    with np.load(tmp_path / "states.npz") as d:
        states, ends = d["states"], d["episode_ends"]
        assert list(d["seed"]) == [5, 6] and list(d["success"]) == [False, False]
        assert np.allclose(d["max_score"], [r["max_score"] for r in metrics["per_episode"]])
    assert list(ends) == list(np.cumsum([r["steps"] + 1 for r in metrics["per_episode"]])) and states.shape[1] == 5
    env = PushTAdapter("state").make_env()
    for first, seed in ((0, 5), (ends[0], 6)):  # each episode starts at its seed's reset state
        env.reset(seed=seed)
        assert np.allclose(states[first], pusht.env_state(env))
    env.close()


def _image_store(path: Path, states: np.ndarray) -> Path:
    """A two-episode PushT replay buffer whose frames gym-pusht rendered from `states`."""
    from sciddiff.policy.replay_buffer import ReplayBuffer

    frames, settled = pusht.render_states(states)
    buf = ReplayBuffer.create(path)
    half = len(states) // 2
    for rows in (slice(0, half), slice(half, None)):
        buf.add_episode({"state": settled[rows].astype(np.float32), "action": settled[rows, :2].astype(np.float32),
                         "img": frames[rows].astype(np.float32)})
    return path


def test_encoder_trains_on_rollout_states_and_resumes_from_an_image_policy(tmp_path, tiny_checkpoint, capsys):
    """`--extra-states` renders a rollout's states as training frames (every 10th episode held out and scored);
    `--init-encoder` starts from another image policy's encoder: at LR 0 it comes out unchanged."""
    from sciddiff.policy.evaluate import evaluate_pusht
    from sciddiff.policy.image_transfer import main
    from sciddiff.policy.io import load_policy, save_policy

    rng = np.random.default_rng(0)
    store = _image_store(tmp_path / "demos.zarr", np.column_stack(
        [rng.uniform(50, 450, (12, 4)), rng.uniform(-np.pi, np.pi, 12)]))
    evaluate_pusht(load_policy(tiny_checkpoint), 1, seed=9, show_progress=False, states_out=tmp_path / "roll.npz")
    common = ["--state-policy", str(tiny_checkpoint), "--data", str(store), "--extra-states", str(tmp_path / "roll.npz"),
              "--extra-stride", "50", "--log-every", "2", "--batch-size", "4"]
    assert main([*common, "--out", str(tmp_path / "a"), "--max-seconds", "2"]) == 0
    first = load_policy(tmp_path / "a" / "policy.pt")
    assert np.isfinite(first.meta["val_rollout_vertex_error_px"])  # the one rollout episode is the held-out one
    first.config.num_inference_steps, first.config.ddim_eta = 3, 0.5  # the image policy's own inference settings...
    save_policy(tmp_path / "donor.pt", first, first.meta)
    assert main([*common, "--out", str(tmp_path / "b"), "--max-seconds", "1", "--lr", "0",
                 "--init-encoder", str(tmp_path / "donor.pt")]) == 0
    second = load_policy(tmp_path / "b" / "policy.pt")
    ours, theirs = second.encoder.state_dict(), first.encoder.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert (second.config.num_inference_steps, second.config.ddim_eta) == (3, 0.5)  # ...are kept, not the state policy's
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "c"), "--init-encoder", str(tiny_checkpoint)]) == 2
    assert "is not an image policy" in capsys.readouterr().err and not (tmp_path / "c").exists()
    (tmp_path / "bogus.npz").write_bytes(b"not an npz")
    for extra, message in (([str(tmp_path / "missing.npz")], "no rollout states"),
                           ([str(tmp_path / "bogus.npz")], "cannot read rollout states"),
                           ([str(tmp_path / "roll.npz"), "--extra-stride", "0"], "--extra-stride must be at least 1")):
        args = [*common[:4], "--extra-states", *extra, "--out", str(tmp_path / "d")]
        assert main(args) == 2 and message in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_corrective_demos_of_a_policy_that_never_fails_write_nothing(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    from sciddiff.policy import dagger
    from sciddiff.policy.scripted import main as demos

    monkeypatch.setattr(dagger, "failure_start_states", lambda *a, **k: ([], {"success_rate": 1.0}))
    out = tmp_path / "none.zarr"
    metrics = tmp_path / "m.json"
    assert demos(["--from-policy", str(tiny_checkpoint), "--episodes", "2", "--no-images", "--out", str(out),
                  "--metrics-json", str(metrics)]) == 0
    assert "no failed episode to correct" in capsys.readouterr().err and not out.exists()
    assert json.loads(metrics.read_text())["policy_rollout"]["success_rate"] == 1.0  # the run's result, still written


def test_an_episode_run_one_at_a_time_is_reproduced_alone_and_in_a_batch_up_to_rounding(tiny_checkpoint):
    from sciddiff.policy.evaluate import rollout

    policy = load_policy(tiny_checkpoint)
    adapter = PushTAdapter("environment_state_agent_pos", max_steps=40)

    def run(seeds, batch_size):
        return rollout(policy, adapter, seeds, batch_size=batch_size, show_progress=False, freeze=False,
                       record_states=True)
    alone = run([6], 1)[0].states
    assert np.array_equal(run([5, 6, 7], 1)[1].states, alone)  # the noise follows the episode (was: the run's first seed)
    batched = run([5, 6, 7], 3)
    assert np.allclose(batched[1].states, alone, rtol=1e-4, atol=1e-3)  # batched convolutions round differently
    assert not np.allclose(batched[0].states[-1], batched[1].states[-1])


@pytest.mark.skipif(not default_zarr().exists(), reason="PushT demonstrations not available")  # train reads them
def test_another_sampler_takes_the_shipped_policys_noise_as_far_as_it_goes(tmp_path, capsys):
    from sciddiff.cli import main
    from sciddiff.policy.train import build_parser, train

    out = tmp_path / "m.json"  # the shipped policies re-noise (eta = inf): DPM-Solver++ takes eta <= 1
    assert main(["policy", "eval", "--episodes", "1", "--max-steps", "16", "--sampler", "dpmpp_2m", "--inference-steps",
                 "4", "--threads", "1", "--metrics-json", str(out)]) == 0
    assert "beyond what dpmpp_2m takes: eta 1" in capsys.readouterr().err
    assert json.loads(out.read_text())["ddim_eta"] == 1.0
    train(build_parser().parse_args(["--init", str(REPO / "data/policy/pusht_state.pt"), "--out", str(tmp_path / "run"), "--steps",
                                     "0", "--sampler", "dpmpp_2m", "--inference-steps", "5", "--threads", "1"]))
    assert load_policy(tmp_path / "run" / "policy.pt").config.ddim_eta == 1.0  # a traceback before


def test_a_generic_policy_is_checked_against_its_env(tmp_path):
    """Data of other sizes than the env's trained, then crashed mid-rollout (observations) or silently acted on one
    action of two; a discrete env crashed in gymnasium; a "module:EnvId" custom env failed without --max-steps; and
    success meant `terminated` also where termination is failure (CartPole: a falling pole scored 100%)."""
    from sciddiff.policy.runner import EnvAdapter

    pendulum = EnvAdapter("Pendulum-v1", None)
    assert pendulum.max_steps == pendulum.registered_steps == EnvAdapter("Pendulum-v1").max_steps == 200  # was 300
    assert PushTAdapter().length_notes() == []  # PushT past its 300 steps: a note, as for any env
    assert "beyond gym_pusht/PushT-v0's registered 300" in PushTAdapter(max_steps=400).length_notes()[0]
    import sciddiff.policy as package  # the names a script reaches for, from the package

    assert package.load_policy is load_policy and package.EnvAdapter is EnvAdapter
    assert pendulum.check_policy(3, 1, np.array([[-1.5], [1.9]])) == []
    for dims, message in (((2, 1), "reads 2 observation features, Pendulum-v1 observes 3"),
                          ((3, 2), r"writes 2 action values, Pendulum-v1 takes an action of shape \(1,\)")):
        with pytest.raises(ValueError, match=message):
            pendulum.check_policy(*dims)
    (note,) = pendulum.check_policy(3, 1, np.array([[-4.0], [1.0], [0.5], [3.0]]))
    assert note.startswith("50.0% of the demonstrated actions lie beyond Pendulum-v1's bounds [-2, 2]")
    assert "not comparable" in EnvAdapter("Pendulum-v1", 500).check_policy(3, 1)[0]
    with pytest.raises(ValueError, match="Discrete action space"):
        EnvAdapter("CartPole-v1", None).check_policy(4, 1)
    (tmp_path / "my_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyPendulum-v0', entry_point='gymnasium.envs.classic_control:PendulumEnv', "
        "max_episode_steps=50)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert EnvAdapter("my_envs:MyPendulum-v0", None).max_steps == 50  # the module registers it, as gym.make reads it
    finally:
        sys.path.remove(str(tmp_path))
    survived = EnvAdapter("Pendulum-v1", None, success="survived")
    assert not survived.is_success(1.0, terminated=True) and survived.is_success(1.0, terminated=False)
    assert pendulum.is_success(1.0, terminated=True) and not pendulum.is_success(1.0, terminated=False)
    with pytest.raises(ValueError, match="success must be one of"):
        EnvAdapter("Pendulum-v1", None, success="won")


def test_generic_training_and_eval_refuse_an_env_the_data_does_not_fit(tmp_path, capsys, tiny_checkpoint):
    from sciddiff.cli import main
    from sciddiff.policy.replay_buffer import ReplayBuffer

    store = ReplayBuffer.create(tmp_path / "demos.zarr")
    rng = np.random.default_rng(0)
    for _ in range(3):  # 2 observation features, where Pendulum observes 3
        store.add_episode({"state": rng.normal(size=(30, 2)).astype(np.float32),
                           "action": rng.uniform(-2, 2, (30, 1)).astype(np.float32)})
    run = tmp_path / "run"
    assert main(["policy", "train", "--task", "generic", "--env", "Pendulum-v1", "--data", str(tmp_path / "demos.zarr"),
                 "--out", str(run), "--steps", "2", "--threads", "1", "--val-episodes", "1"]) == 2
    assert "reads 2 observation features, Pendulum-v1 observes 3" in capsys.readouterr().err and not run.exists()
    assert main(["policy", "eval", "--checkpoint", str(tiny_checkpoint), "--success", "survived"]) == 2
    assert "--success is for --task generic" in capsys.readouterr().err
