"""PushT task facts shared by training and evaluation: the T block's geometry and the observation features.

Units: pixels of the 512x512 arena, radians, 10 Hz control; actions are target agent positions in [0, 512]^2.
State features (18-D): agent (x, y) followed by the 8 block vertices (x0, y0, ..., x7, y7) in gym-pusht's
`get_keypoints` order. gym-pusht returns exactly these vertices for obs_type "environment_state_agent_pos"; for
obs_type "state" (agent x, y, block x, y, angle) and for the demonstration zarr (`data/state`, same layout) they are
computed here from the block pose, so a policy trained on the zarr sees what the env shows it at evaluation time.
(The paper's 9 `data/keypoint` points are a different set that gym-pusht cannot produce, so they are not used.)
Image features: 96x96 RGB frames, uint8, channel-first (3, 96, 96), plus the agent position; the zarr frames match
gym-pusht's own 96x96 render of the same state to within ~0.1 grey level on average.
"""
from __future__ import annotations

import numpy as np

# Vertices of the two rectangles of the T in the block's body frame (pixels), in gym-pusht's order:
# the bar (0-3) then the stem (4-7); see `PushTEnv.add_tee` / `get_keypoints`.
T_VERTICES = np.array(
    [[-60, 0], [60, 0], [60, 30], [-60, 30], [-15, 30], [15, 30], [15, 120], [-15, 120]], dtype=np.float64
)
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
SUCCESS_COVERAGE = 0.95  # gym-pusht terminates (success) when coverage exceeds this
STATE_FEATURE_DIM = 18
ENV_ID = "gym_pusht/PushT-v0"


def block_keypoints(pose: np.ndarray) -> np.ndarray:
    """Block pose (..., 3) = (x, y, angle) -> world vertices (..., 8, 2), as gym-pusht's `get_keypoints`."""
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[..., 2]), np.sin(pose[..., 2])
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # (..., 2, 2)
    return np.einsum("...ij,kj->...ki", rot, T_VERTICES) + pose[..., None, :2]


def state_features(state: np.ndarray) -> np.ndarray:
    """(..., 5) agent x, y, block x, y, angle -> (..., 18) float32 features."""
    state = np.asarray(state)
    kp = block_keypoints(state[..., 2:5])
    return np.concatenate([state[..., :2], kp.reshape(*kp.shape[:-2], 16)], -1).astype(np.float32)


def obs_to_features(obs, obs_type: str) -> dict[str, np.ndarray]:
    """One gym-pusht observation -> the policy's per-step features ({"state"} or {"image", "agent_pos"})."""
    if obs_type == "state":
        return {"state": state_features(obs)}
    if obs_type == "environment_state_agent_pos":
        return {"state": np.concatenate([obs["agent_pos"], obs["environment_state"]]).astype(np.float32)}
    if obs_type == "pixels_agent_pos":
        return {"image": np.ascontiguousarray(obs["pixels"].transpose(2, 0, 1)),
                "agent_pos": np.asarray(obs["agent_pos"], dtype=np.float32)}
    raise ValueError(f"unsupported PushT obs_type {obs_type!r}")


def env_state(env) -> np.ndarray:
    """The simulator state of a gym-pusht env: agent x, y, block x, y, angle (pixels, radians)."""
    u = env.unwrapped
    return np.array([*u.agent.position, *u.block.position, u.block.angle])


def reset_to_state(env, state: np.ndarray, seed: int | None = None):
    """Reset a gym-pusht env and put it in `state` (agent x, y, block x, y, angle) -> the observation there.
    gym-pusht's own `reset_to_state` option sets the block's position before its angle; pymunk turns a body about its
    centre of gravity, which is off the T's origin, so the block lands up to ~90 px away from a recorded state. Here
    the angle is set first, which restores the demonstrations' states exactly."""
    env.reset(seed=seed)
    u = env.unwrapped
    u.agent.position = tuple(float(v) for v in state[:2])
    u.block.angle = float(state[4])
    u.block.position = tuple(float(v) for v in state[2:4])
    u.space.step(u.dt)  # as gym-pusht does after setting a state: contacts and shape positions take effect
    return u.get_obs()


def render_states(states: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames (n, 96, 96, 3) uint8 of PushT states (n, 5), rendered by gym-pusht itself (`reset_to_state`), and the
    states (n, 5) the simulator settled in (one physics step may push an overlapping block): image/label pairs."""
    import gymnasium as gym
    import gym_pusht  # noqa: F401  (registers the env)

    env = gym.make(ENV_ID, obs_type="pixels_agent_pos")
    frames, settled = np.empty((len(states), 96, 96, 3), np.uint8), np.empty((len(states), 5), np.float64)
    for i, state in enumerate(states):
        frames[i] = reset_to_state(env, state, seed=seed)["pixels"]
        settled[i] = env_state(env)
    env.close()
    return frames, settled


def render_random_states(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`render_states` of n random states drawn as gym-pusht's reset draws them (agent in [50, 450]^2, block in
    [100, 400]^2, angle uniform): states the demonstrations rarely visit, for perception training."""
    rng = np.random.default_rng(seed)
    starts = np.column_stack([rng.integers(50, 450, (n, 2)), rng.integers(100, 400, (n, 2)), rng.uniform(-np.pi, np.pi, n)])
    return render_states(starts, seed)
