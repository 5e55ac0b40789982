"""Policy data layer: zarr replay buffer, episode-edge padding, normalizer, PushT features that match the env."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import zarr

from sciddiff.cli import UserError
from sciddiff.policy import pusht
from sciddiff.policy.data import default_zarr, load_dataset, prepare_dataset
from sciddiff.policy.normalizer import MinMaxNormalizer, pixels_to_unit
from sciddiff.policy.replay_buffer import ReplayBuffer
from sciddiff.policy.sampler import sequence_windows, split_episodes


def _episode(rng, n):
    return {"state": rng.uniform(0, 512, (n, 5)).astype(np.float32),
            "action": rng.uniform(0, 512, (n, 2)).astype(np.float32),
            "img": rng.integers(0, 255, (n, 8, 8, 3)).astype(np.float32)}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_replay_buffer_roundtrip_and_append(tmp_path, zarr_format):
    rng = np.random.default_rng(0)
    episodes = [_episode(rng, n) for n in (5, 9, 3)]
    path = tmp_path / "demo.zarr"
    buf = ReplayBuffer.create(path, zarr_format=zarr_format)
    for ep in episodes[:2]:
        buf.add_episode(ep)
    # reopen for appending (what a demonstrator does), then read back from a fresh handle
    ReplayBuffer.open(path, mode="a").add_episode(episodes[2])
    buf = ReplayBuffer.open(path)
    assert buf.n_episodes == 3 and buf.n_steps == 17
    np.testing.assert_array_equal(buf.episode_ends, [5, 14, 17])
    assert zarr.open_group(str(path), mode="r").metadata.zarr_format == zarr_format
    for i, ep in enumerate(episodes):
        got = buf.get_episode(i)
        for k in ep:
            np.testing.assert_array_equal(got[k], ep[k])
    data, ends = buf.load(["action"], episodes=[2, 0])
    np.testing.assert_array_equal(ends, [3, 8])
    np.testing.assert_array_equal(data["action"], np.concatenate([episodes[2]["action"], episodes[0]["action"]]))
    with pytest.raises(ValueError):
        buf_a = ReplayBuffer.open(path, mode="a")
        buf_a.add_episode({"state": episodes[0]["state"]})  # missing keys


def test_replay_buffer_trims_rows_of_an_interrupted_append(tmp_path):
    rng = np.random.default_rng(1)
    buf = ReplayBuffer.create(tmp_path / "b.zarr")
    buf.add_episode(_episode(rng, 4))
    buf.root["data/action"].append(np.zeros((3, 2), np.float32))  # data written, episode end never recorded
    buf = ReplayBuffer.open(tmp_path / "b.zarr", mode="a")
    assert buf.root["data/action"].shape[0] == 4 == buf.n_steps


def test_rows_beyond_the_episode_ends_are_named_and_a_damaged_store_is_one_error(tmp_path, capsys):
    """Data rows after the last episode end (episode_ends that miss the data's last episode, or written inclusive)
    were dropped without a word; a damaged chunk or metadata file or a 0-d array gave zarr's traceback."""
    state, action = _good_rows()
    path = _raw_store(tmp_path / "short.zarr", state, action, [10, 20])
    assert ReplayBuffer.open(path).n_steps == 20
    assert "data/action has 10 rows after meta/episode_ends' last end (row 20)" in capsys.readouterr().err
    path = _raw_store(tmp_path / "chunk.zarr", state, action, [10, 20, 30])
    for chunk in [p for p in (path / "data" / "action" / "c").rglob("*") if p.is_file()]:
        chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(UserError, match="cannot read data/action"):
        ReplayBuffer.open(path).load(["action"])
    path = _raw_store(tmp_path / "meta.zarr", state, action, [10, 20, 30])
    (path / "data" / "state" / "zarr.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged zarr store"):
        ReplayBuffer.open(path)
    root = zarr.open_group(str(tmp_path / "scalar.zarr"), mode="w")
    root.require_group("data").create_array("state", data=np.float32(1.0))
    root.require_group("meta").create_array("episode_ends", data=np.array([1], dtype=np.int64))
    with pytest.raises(UserError, match="data/state is a single value"):
        ReplayBuffer.open(tmp_path / "scalar.zarr")


def test_a_refused_episode_writes_no_row_and_the_next_one_is_stored_whole(tmp_path):
    # the state rows of an episode whose action width was wrong were written before the refusal: the next episode
    # on the same buffer then read back with the refused episode's states
    rng = np.random.default_rng(2)
    buf = ReplayBuffer.create(tmp_path / "b.zarr")
    with pytest.raises(ValueError, match="numeric"):  # a refused first episode leaves no half-made key set
        buf.add_episode({"state": np.zeros((3, 5), np.float32), "action": np.array([{"a": 1}] * 3, dtype=object)})
    first, second = _episode(rng, 4), _episode(rng, 6)
    buf.add_episode(first)
    for wrong in ({"action": first["action"][:, :1]}, {"img": first["img"].astype(np.uint8)[..., :2]}):
        with pytest.raises(ValueError, match="per step"):
            buf.add_episode({**first, **wrong})
    buf.add_episode(second)
    back = ReplayBuffer.open(tmp_path / "b.zarr")
    np.testing.assert_array_equal(back.episode_ends, [4, 10])
    for k in second:
        np.testing.assert_array_equal(back.get_episode(1)[k], second[k])


def test_replay_buffer_bad_paths(tmp_path):
    with pytest.raises(UserError):
        ReplayBuffer.open(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(UserError):
        ReplayBuffer.open(tmp_path / "plain.zarr")


def test_windows_pad_at_episode_edges():
    ends = np.array([5, 12])  # episodes [0, 5) and [5, 12)
    w = sequence_windows(ends, horizon=4, pad_before=1, pad_after=2)
    # per episode: starts -1 .. L-4+2  ->  L - 4 + 1 + 2 + 1 windows
    assert len(w) == (5 - 4 + 4) + (7 - 4 + 4)
    np.testing.assert_array_equal(w[0], [0, 0, 1, 2])  # first frame repeated before the start
    np.testing.assert_array_equal(w[4], [3, 4, 4, 4])  # last frame repeated after the end
    np.testing.assert_array_equal(w[5], [5, 5, 6, 7])  # second episode starts fresh
    np.testing.assert_array_equal(w[-1], [10, 11, 11, 11])
    episode_of = np.searchsorted(ends, w, side="right")
    assert (episode_of == episode_of[:, :1]).all(), "a window crosses an episode boundary"
    assert (np.diff(w, axis=1) >= 0).all() and (np.diff(w, axis=1) <= 1).all()


def test_windows_policy_horizon_and_split():
    ends = np.array([20, 50, 51])
    w = sequence_windows(ends, horizon=16, pad_before=1, pad_after=7, episodes=[1])
    assert w.min() == 20 and w.max() == 49 and len(w) == 30 - 16 + 1 + 7 + 1
    train, val = split_episodes(10, 2, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and len(train) == 8
    # Diffusion Policy's downsample_mask: a seeded draw among the training episodes (not the first ones), one
    # generator per mask, each seeded with the run's seed
    picked = np.random.default_rng(3).choice(8, size=5, replace=False)
    assert split_episodes(10, 2, seed=3, max_train=5)[0].tolist() == sorted(train[picked].tolist())
    assert split_episodes(10, 2, seed=3, max_train=8)[0].tolist() == train.tolist()


def test_normalizer_roundtrip_and_state_dict():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.uniform(-3, 500, (100, 3)), np.full((100, 1), 7.0)], 1)  # last dim constant
    norm = MinMaxNormalizer.fit(data)
    x = torch.as_tensor(data, dtype=torch.float32)
    y = norm.normalize(x)
    assert y[:, :3].min() >= -1 - 1e-6 and y[:, :3].max() <= 1 + 1e-6
    assert torch.allclose(y[:, :3].amin(0), torch.full((3,), -1.0)) and torch.allclose(y[:, :3].amax(0), torch.ones(3))
    assert torch.allclose(y[:, 3], torch.zeros(100))  # constant dim centred, not divided by zero
    torch.testing.assert_close(norm.unnormalize(y), x, rtol=1e-5, atol=1e-4)
    clone = MinMaxNormalizer(4)
    clone.load_state_dict(norm.state_dict())
    torch.testing.assert_close(clone.normalize(x), y)
    assert pixels_to_unit(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]


def test_pusht_features_match_the_env():
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("gym_pusht")
    kp_env = gym.make(pusht.ENV_ID, obs_type="environment_state_agent_pos")
    st_env = gym.make(pusht.ENV_ID, obs_type="state")
    for seed in range(3):
        kp_obs, _ = kp_env.reset(seed=seed)
        st_obs, _ = st_env.reset(seed=seed)
        a = pusht.obs_to_features(kp_obs, "environment_state_agent_pos")["state"]
        b = pusht.obs_to_features(st_obs, "state")["state"]
        assert a.shape == (pusht.STATE_FEATURE_DIM,)
        np.testing.assert_allclose(a, b, atol=1e-3)
        for _ in range(5):  # and after the block has been pushed around
            action = kp_env.action_space.sample()
            kp_obs = kp_env.step(action)[0]
            st_obs = st_env.step(action)[0]
        np.testing.assert_allclose(pusht.obs_to_features(kp_obs, "environment_state_agent_pos")["state"],
                                   pusht.obs_to_features(st_obs, "state")["state"], atol=1e-3)
    img_env = gym.make(pusht.ENV_ID, obs_type="pixels_agent_pos")
    feats = pusht.obs_to_features(img_env.reset(seed=0)[0], "pixels_agent_pos")
    assert feats["image"].shape == (3, 96, 96) and feats["image"].dtype == np.uint8


def test_random_state_frames_show_their_states():
    pytest.importorskip("gym_pusht")
    frames, states = pusht.render_random_states(4, seed=1)
    assert frames.shape == (4, 96, 96, 3) and frames.dtype == np.uint8 and states.shape == (4, 5)
    assert (states[:, :2] >= 40).all() and (states[:, :2] <= 460).all()
    for frame, state in zip(frames, states):  # the block (filled (143, 163, 184), outlined LightSlateGray) is where its state says
        c, s = np.cos(state[4]), np.sin(state[4])
        for body in ([0.0, 15.0], [0.0, 75.0]):  # the middle of the bar and of the stem, off the T's anti-aliased edge
            x, y = ((state[2:4] + [c * body[0] - s * body[1], s * body[0] + c * body[1]]) / 512 * 96).astype(int)
            assert np.abs(frame[y, x].astype(int) - [143, 163, 184]).max() < 12


@pytest.mark.skipif(not default_zarr().exists(), reason="PushT demonstrations not available")
def test_real_pusht_store_reads_and_prepares(tmp_path):
    buf = ReplayBuffer.open(default_zarr())
    assert buf.n_episodes == 206 and buf.n_steps == 25650
    out = prepare_dataset(default_zarr(), tmp_path / "state.npz", "state")
    arrays = load_dataset(out, "state")
    assert arrays["state"].shape == (25650, 18) and arrays["action"].shape == (25650, 2)
    # the features' agent position is the recorded one; the vertices are 8 points on the block
    state = np.asarray(buf.root["data/state"][:10])
    np.testing.assert_allclose(arrays["state"][:10, :2], state[:, :2])
    kp = arrays["state"][:10, 2:].reshape(10, 8, 2)
    np.testing.assert_allclose(np.linalg.norm(kp[:, 0] - kp[:, 1], axis=-1), 120.0, rtol=1e-5)  # the T's bar
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("gym_pusht")
    env = gym.make(pusht.ENV_ID, obs_type="environment_state_agent_pos").unwrapped
    env.reset(seed=0)
    for s in state[::3]:  # the env shows exactly these vertices for the recorded block pose
        env.block.angle = float(s[4])  # angle before position: the block's centre of gravity is off its origin
        env.block.position = s[2:4].tolist()
        np.testing.assert_allclose(env.get_keypoints(env._block_shapes).ravel(), pusht.state_features(s)[2:],
                                   atol=1e-3)
    with pytest.raises(UserError):
        load_dataset(out, "image")


def test_rendered_states_are_the_states_asked_for():
    gym = pytest.importorskip("gymnasium")
    pytest.importorskip("gym_pusht")
    asked = np.array([[100.0, 100.0, 300.0, 300.0, 0.5], [450.0, 60.0, 200.0, 350.0, -2.0]])  # agent clear of the T
    frames, settled = pusht.render_states(asked)
    assert frames.shape == (2, 96, 96, 3) and np.allclose(settled, asked, atol=1e-6)
    env = gym.make(pusht.ENV_ID, obs_type="pixels_agent_pos")
    # gym-pusht's own renderer changes a few pixels from call to call (~7% of calls, up to ~1.3% of the pixels): a
    # wrong state differs in every attempt, a renderer flicker in one
    differ = [np.any(pusht.render_states(asked)[0][1] != pusht.reset_to_state(env, asked[1])["pixels"], axis=-1).mean()
              for _ in range(3)]
    assert min(differ) < 0.01, differ
    env.close()


def _raw_store(path, state, action, ends):
    """A zarr store written array by array, as another program (or a corrupted copy) might leave it."""
    root = zarr.open_group(str(path), mode="w")
    root.require_group("data").create_array("state", data=np.asarray(state))
    root["data"].create_array("action", data=np.asarray(action))
    root.require_group("meta").create_array("episode_ends", data=np.asarray(ends, dtype=np.int64))
    return path


def _good_rows(n=30):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 512, (n, 5)).astype(np.float32), rng.uniform(0, 512, (n, 2)).astype(np.float32)


@pytest.mark.parametrize("broken, message", [
    ("state3", "data/state has shape (30, 3); PushT needs (rows, 5)"),
    ("action3", "data/action has shape (30, 3); PushT needs (rows, 2)"),
    ("ends_past", "episode_ends ends at row 40 but data/"),
    ("ends_decreasing", "strictly increasing"),
    ("ends_2d", "1-D integer"),
    ("short_action", "data/action has only 15 rows"),
    ("nan_action", "data/action holds nan or inf in 1 row(s) (the first is row 12)"),
    ("inf_state", "data/state holds nan or inf"),
    ("no_episodes", "holds no episodes"),
])
def test_malformed_stores_are_refused_in_one_line(tmp_path, broken, message):
    state, action = _good_rows()
    ends = [10, 20, 30]
    if broken == "state3":
        state = state[:, :3]
    elif broken == "action3":
        action = np.concatenate([action, action[:, :1]], 1)
    elif broken == "ends_past":
        ends = [10, 20, 40]
    elif broken == "ends_decreasing":
        ends = [20, 10, 30]
    elif broken == "ends_2d":
        ends = [[10], [20], [30]]
    elif broken == "short_action":
        action = action[:15]
    elif broken == "nan_action":
        action[12, 1] = np.nan
    elif broken == "inf_state":
        state[3, 4] = np.inf
    elif broken == "no_episodes":
        state, action, ends = state[:0], action[:0], []
    path = _raw_store(tmp_path / f"{broken}.zarr", state, action, ends)
    with pytest.raises(UserError, match="^" + re.escape(f"{path}")) as err:
        load_dataset(path, "state")
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=re.escape(message)):  # `policy prepare` reads the same way
        prepare_dataset(path, tmp_path / "out.npz", "state")
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("broken, message", [
    ("state_1d", "state has shape (30,); PushT needs (rows, 18)"),
    ("state_text", "state must hold numbers, not <U"),
    ("ends_2d", "episode_ends must be a 1-D integer array"),
    ("ends_past", "episode_ends ends at row 40 but action has 30 rows"),
    ("action_short", "episode_ends ends at row 30 but action has 20 rows"),
    ("action3", "action has shape (30, 3); PushT needs (rows, 2)"),
    ("nan_state", "state holds nan or inf"),
    ("no_episodes", "holds no episodes"),
])
def test_malformed_npz_datasets_are_refused_in_one_line(tmp_path, broken, message):
    rng = np.random.default_rng(0)
    arrays = {"state": rng.uniform(0, 512, (30, 18)).astype(np.float32),
              "action": rng.uniform(0, 512, (30, 2)).astype(np.float32), "episode_ends": np.array([10, 20, 30])}
    if broken == "state_1d":
        arrays["state"] = arrays["state"][:, 0]
    elif broken == "state_text":
        arrays["state"] = np.array(["x"] * 30)
    elif broken == "ends_2d":
        arrays["episode_ends"] = arrays["episode_ends"][:, None]
    elif broken == "ends_past":
        arrays["episode_ends"] = np.array([10, 20, 40])
    elif broken == "action_short":
        arrays["action"] = arrays["action"][:20]
    elif broken == "action3":
        arrays["action"] = np.concatenate([arrays["action"], arrays["action"][:, :1]], 1)
    elif broken == "nan_state":
        arrays["state"][7, 3] = np.nan
    elif broken == "no_episodes":
        arrays = {k: v[:0] for k, v in arrays.items()}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(UserError, match=re.escape(message)):
        load_dataset(tmp_path / "d.npz", "state")


def test_frames_stored_as_0_to_1_floats_are_refused(tmp_path):
    """Such frames rounded to 0/1 uint8 (nearly black images) and an image policy trained on them without a word."""
    rng = np.random.default_rng(0)
    buf = ReplayBuffer.create(tmp_path / "unit.zarr")
    for _ in range(2):
        episode = _episode(rng, 12)
        buf.add_episode({**episode, "img": episode["img"] / 255.0})
    with pytest.raises(UserError, match=r"data/img holds values up to 0\.99.*must be 0-255 pixels"):
        load_dataset(tmp_path / "unit.zarr", "image")
