"""Scripted PushT demonstrator: it finishes pushes in the real gym-pusht env and writes the paper's zarr layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import LineString

from sciddiff.policy import pusht
from sciddiff.policy.data import concat_datasets, dataset_from_zarr
from sciddiff.policy.replay_buffer import ReplayBuffer
from sciddiff.policy.scripted import AGENT_RADIUS, PushPlanner, _block_polygon, approach_path, main, run_episode

NEAR_GOAL = np.array([120.0, 420.0, 280.0, 240.0, np.pi / 4 + 0.3])  # block 30 px and 0.3 rad off the goal


def test_planner_finishes_a_push_near_the_goal():
    ep = run_episode(PushPlanner(), seed=0, render=False, start_state=NEAR_GOAL)
    assert np.allclose(ep.states[0], NEAR_GOAL, atol=1e-6)  # the episode starts where it was asked to
    assert ep.success and ep.max_coverage > pusht.SUCCESS_COVERAGE
    assert len(ep.actions) < 150 and len(ep.states) == len(ep.actions) == len(ep.contacts)
    acts = np.asarray(ep.actions)
    assert ((acts >= 0) & (acts <= 512)).all()


@pytest.mark.parametrize("obs_type", ["state", "pixels_agent_pos"])
def test_reset_to_state_restores_the_block_pose(obs_type):
    """gym-pusht's own reset_to_state sets the position before the angle and lands tens of px off a turned block."""
    import gymnasium as gym
    env = gym.make(pusht.ENV_ID, obs_type=obs_type)
    for angle in (0.0, 1.2, -2.5):
        state = np.array([100.0, 400.0, 300.0, 200.0, angle])
        obs = pusht.reset_to_state(env, state, seed=0)
        u = env.unwrapped
        assert np.allclose([*u.agent.position, *u.block.position, u.block.angle], state, atol=1e-6)
        assert np.allclose(obs["agent_pos"] if obs_type != "state" else obs[:2], state[:2])
        if obs_type == "state":
            assert np.allclose(obs[:4], state[:4], atol=1e-4)
            assert np.isclose(np.cos(obs[4] - state[4]), 1.0)  # the obs wraps the angle to [0, 2 pi)
    env.close()


def test_approach_goes_around_the_block():
    block = np.array([256.0, 256.0, 0.3])
    start, goal = np.array([256.0, 60.0]), np.array([256.0, 460.0])  # straight line crosses the T
    path = approach_path(start, goal, block, clearance=6.0)
    keep_out = _block_polygon(block, AGENT_RADIUS)
    assert len(path) > 1 and np.allclose(path[-1], goal)
    assert not LineString([start, *path]).intersects(keep_out)
    assert approach_path(start, np.array([60.0, 60.0]), block, 6.0) == [pytest.approx(np.array([60.0, 60.0]))]


def test_demos_cli_writes_the_paper_layout(tmp_path, capsys):
    out = tmp_path / "demos.zarr"
    assert main(["--out", str(out), "--episodes", "1", "--seed", "2", "--keep-failures",
                 "--metrics-json", str(tmp_path / "m.json")]) == 0
    buf = ReplayBuffer.open(out)
    assert buf.keys == ["action", "img", "n_contacts", "state"] and buf.n_episodes == 1
    ep = buf.get_episode(0)
    assert ep["img"].shape == (buf.n_steps, 96, 96, 3) and ep["img"].dtype == np.float32
    # replaying the recorded actions from the same seed reproduces the recorded states and frames
    import gymnasium as gym
    env = gym.make(pusht.ENV_ID, obs_type="pixels_agent_pos")
    obs, _ = env.reset(seed=2)
    for i in range(buf.n_steps):
        u = env.unwrapped
        assert np.allclose([*u.agent.position, *u.block.position, u.block.angle], ep["state"][i], atol=1e-3)
        assert np.array_equal(obs["pixels"], ep["img"][i])
        obs, *_ = env.step(ep["action"][i])
    env.close()
    arrays = dataset_from_zarr(out, "state")
    both = concat_datasets([arrays, arrays])
    assert both["episode_ends"].tolist() == [buf.n_steps, 2 * buf.n_steps]
    capsys.readouterr()
    assert main(["--out", str(out), "--episodes", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --episodes must be at least 1"
    assert main(["--out", str(out), "--episodes", "1", "--no-images"]) == 2  # the store has frames
    assert "--no-images" in capsys.readouterr().err and buf.n_episodes == 1
    (tmp_path / "notzarr").mkdir()
    assert main(["--out", str(tmp_path / "notzarr"), "--episodes", "1"]) == 2


def test_failed_episodes_are_written_only_when_asked(tmp_path):
    out = tmp_path / "d.zarr"
    assert main(["--out", str(out), "--episodes", "1", "--max-steps", "5", "--no-images"]) == 0  # 5 steps: a failure
    assert not out.exists()
    assert main(["--out", str(out), "--episodes", "1", "--max-steps", "5", "--no-images", "--keep-failures"]) == 0
    buf = ReplayBuffer.open(out)
    assert buf.n_steps == 5 and buf.keys == ["action", "n_contacts", "state"]


def test_complete_appends_the_last_push_to_recorded_episodes(tmp_path, capsys):
    src = tmp_path / "human.zarr"
    buf = ReplayBuffer.create(src)
    states = np.stack([NEAR_GOAL + [0.0, 5.0 * k, 0.0, 0.0, 0.0] for k in range(3, -1, -1)])  # ends at NEAR_GOAL
    recorded = {"state": states.astype(np.float32), "action": states[:, :2].astype(np.float32),
                "n_contacts": np.zeros((4, 1), np.float32)}
    buf.add_episode(recorded)
    buf.add_episode({k: v[1:3] for k, v in recorded.items()})  # another start state: episodes are told apart by it
    out = tmp_path / "completed.zarr"
    assert main(["--complete", str(src), "--out", str(out), "--episodes", "1", "--no-images"]) == 0
    done = ReplayBuffer.open(out)
    assert done.n_episodes == 1 and done.keys == ["action", "n_contacts", "state"]
    ep = done.get_episode(0)
    assert all(np.array_equal(ep[k][:3], recorded[k][:3]) for k in ("state", "action"))
    # the planner starts from the last recorded state, its first row in place of the recording's last: once each
    assert np.allclose(ep["state"][3], NEAR_GOAL, atol=1e-4) and not np.allclose(ep["state"][4], NEAR_GOAL, atol=1e-4)
    assert not np.array_equal(ep["action"][3], recorded["action"][3])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["success_rate"] == 1.0 and summary["mean_steps"] == done.n_steps - 3
    # replaying the actions from the last recorded state on reaches success
    import gymnasium as gym
    env = gym.make(pusht.ENV_ID, obs_type="state")
    pusht.reset_to_state(env, NEAR_GOAL, seed=0)
    coverage = max(env.step(a)[-1]["coverage"] for a in ep["action"][3:])
    env.close()
    assert coverage > pusht.SUCCESS_COVERAGE
    assert main(["--complete", str(src), "--out", str(tmp_path / "x.zarr")]) == 2  # no frames to copy
    assert "--no-images" in capsys.readouterr().err
    # the same command again (after an interruption: episodes are appended one by one) continues after the episodes
    # --out holds, appending no copies; one more episode asked for is appended
    assert main(["--complete", str(src), "--out", str(out), "--episodes", "1", "--no-images"]) == 0
    captured = capsys.readouterr()
    assert "already holds the completions of the first 1 of these 1 episodes" in captured.err
    assert ReplayBuffer.open(out).n_episodes == 1 and json.loads(captured.out.splitlines()[-1])["episodes"] == 0
    assert main(["--complete", str(src), "--out", str(out), "--no-images", "--keep-failures"]) == 0
    assert ReplayBuffer.open(out).n_episodes == 2 and "continuing after them" in capsys.readouterr().err
    # a store holding a later episode but not the first is not a run to continue: appending would copy it again
    later = tmp_path / "later.zarr"
    ReplayBuffer.create(later).add_episode(ReplayBuffer.open(out).get_episode(1))
    assert main(["--complete", str(src), "--out", str(later), "--no-images"]) == 2
    assert f"already holds the episodes of episode(s) 1 of {src}" in capsys.readouterr().err
    # a continued run counts the episodes it holds by position: a later episode that starts where the first does
    # is not taken for done
    twin = _source(tmp_path / "twin.zarr", np.concatenate([states[:1], states[:1] + [[0, 0, 1, 0, 0]]]))
    buf = ReplayBuffer.open(twin, mode="a")
    buf.add_episode(buf.get_episode(0))  # episode 1 starts where episode 0 does
    partial = tmp_path / "partial.zarr"
    ReplayBuffer.create(partial).add_episode(buf.get_episode(0))
    assert main(["--complete", str(twin), "--out", str(partial), "--no-images", "--keep-failures"]) == 0
    assert ReplayBuffer.open(partial).n_episodes == 2  # episode 1 completed, not taken for done


def _source(path, state, n_contacts=True):
    buf = ReplayBuffer.create(path)
    episode = {"state": state.astype(np.float32), "action": state[:, :2].astype(np.float32)}
    if n_contacts:
        episode["n_contacts"] = np.zeros((len(state), 1), np.float32)
    buf.add_episode(episode)
    return path


def test_complete_refuses_a_malformed_source_before_any_work(tmp_path, capsys):
    states = np.stack([NEAR_GOAL] * 4)
    nan = states.copy()
    nan[2, 3] = np.nan
    for name, state, message in [
        ("narrow", states[:, :3], "data/state has shape (4, 3); PushT needs (rows, 5): agent x, y, block x, y, angle"),
        ("nan", nan, "data/state holds nan or inf in 1 row(s) (the first is row 2)"),
    ]:
        src = _source(tmp_path / f"{name}.zarr", state)
        assert main(["--complete", str(src), "--out", str(tmp_path / "out.zarr"), "--no-images"]) == 2
        assert capsys.readouterr().err.strip() == f"error: {src}: {message}"
        assert not (tmp_path / "out.zarr").exists()


def test_key_mismatch_hints_only_suggest_what_helps(tmp_path, capsys):
    src = _source(tmp_path / "src.zarr", np.stack([NEAR_GOAL] * 4), n_contacts=False)
    assert main(["--complete", str(src), "--out", str(tmp_path / "out.zarr"), "--no-images"]) == 2
    err = capsys.readouterr().err
    assert "lacks ['n_contacts']" in err and "--no-images" not in err
    other = ReplayBuffer.create(tmp_path / "other.zarr")  # e.g. the human store: keypoints besides the arrays
    other.add_episode({"state": np.zeros((3, 5), np.float32), "action": np.zeros((3, 2), np.float32),
                       "n_contacts": np.zeros((3, 1), np.float32), "keypoint": np.zeros((3, 9, 2), np.float32)})
    assert main(["--out", str(tmp_path / "other.zarr"), "--episodes", "1", "--no-images"]) == 2
    err = capsys.readouterr().err
    assert "choose another --out" in err and "--no-images" not in err


def test_rerunning_demos_into_the_same_store_is_refused(tmp_path, capsys):
    out = tmp_path / "d.zarr"
    common = ["--out", str(out), "--max-steps", "5", "--no-images", "--keep-failures"]
    assert main([*common, "--episodes", "2"]) == 0
    capsys.readouterr()
    assert main([*common, "--episodes", "3", "--seed", "1"]) == 2  # seed 1 is there already
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out} already holds the episodes of seed(s) 1 ") and "--seed 2" in err
    assert ReplayBuffer.open(out).n_episodes == 2
    assert main([*common, "--episodes", "1", "--seed", "2"]) == 0
    assert ReplayBuffer.open(out).n_episodes == 3
