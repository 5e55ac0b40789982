"""Scripted PushT demonstrator: a sampling-based push planner that writes demonstrations in the replay-buffer layout.

One decision = one push. Candidate pushes put the agent (a disc of radius 15) against a point of the T's outline and
drive it along the edge's inward normal, turned by a few angles, for a few distances. Each candidate is simulated in
a second gym-pusht env set to the current state (the agent placed just before the contact) and scored by the block
pose it ends in: its distance to the goal pose (position in units of 100 px, angle weighted twice, in radians) minus
coverage (the distance guides from far away, coverage decides near the goal). The best push is then executed in the real env after an approach routed around
the block (waypoints on a circle about it), as 10 Hz target positions, like a human's mouse. It replans after each
push until coverage exceeds 0.95 (gym-pusht's success) or the step budget runs out.

The block only moves while pushed (gym-pusht's space damping 0 removes all velocity each step), so positions are
the whole state the simulation needs besides the agent's velocity. Units: gym-pusht pixels (arena 512 x 512),
radians. Episodes are written as Diffusion Policy's zarr layout (`data/state` (N, 5) agent x, y, block x, y, angle;
`data/action` (N, 2); `data/img` (N, 96, 96, 3) float32 0-255; `data/n_contacts` (N, 1)); the paper's
`data/keypoint` is left out (its 9 points are not gym-pusht's, see `sciddiff.policy.pusht`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sciddiff.cli import UserError, check_output_path, idle_threads, options_below, print_note
from sciddiff.policy import pusht
from sciddiff.policy.data import pusht_store_arrays
from sciddiff.policy.sampler import episode_starts

AGENT_RADIUS = 15.0
# The T's outline (the union of its two rectangles) in the body frame, counter-clockwise in pymunk coordinates.
T_OUTLINE = np.array([[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], float)
ARENA = (20.0, 492.0)  # where the agent's centre may be sent (walls at 5 and 506, agent radius 15)


@dataclass
class PlannerConfig:
    contact_spacing: float = 12.0  # px between candidate contact points along the outline
    push_angles: tuple[float, ...] = (-0.5, 0.0, 0.5)  # radians off the inward normal
    push_distances: tuple[float, ...] = (8.0, 20.0, 40.0)  # px the agent's target advances past first contact
    push_speed: float = 12.0  # px per 10 Hz step of the target during a push
    approach_speed: float = 40.0  # px per step of the target during an approach
    clearance: float = 6.0  # px kept between the agent and the block while approaching
    settle_steps: int = 2  # steps the final target is held after a push
    max_settle_steps: int = 6  # steps the pre-contact point may be held for the agent to arrive
    max_steps: int = 300  # env steps per episode (the evaluation protocol's)
    seed: int = 0  # chooses among equally good pushes
    angle_weight: float = 2.0  # cost of 1 radian of block angle error, in units of 100 px of position error


@dataclass
class Episode:
    seed: int
    states: list = field(default_factory=list)  # (5,) before each action
    actions: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    contacts: list = field(default_factory=list)
    max_coverage: float = 0.0
    pushes: int = 0

    @property
    def success(self) -> bool:
        return self.max_coverage > pusht.SUCCESS_COVERAGE


def _outline_contacts(spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points along the outline (body frame) and their inward unit normals; corners are left out (the normal is
    undefined there and a disc pushing a corner slides off)."""
    points, normals = [], []
    for a, b in zip(T_OUTLINE, np.roll(T_OUTLINE, -1, axis=0)):
        edge = b - a
        length = np.linalg.norm(edge)
        n = max(int(length // spacing), 1)
        t = (np.arange(n) + 0.5) / n
        points.append(a + t[:, None] * edge)
        normals.append(np.repeat([[-edge[1], edge[0]]], n, 0) / length)  # left normal = inward for a CCW outline
    return np.concatenate(points), np.concatenate(normals)


def _rotate(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], -1)


def _block_polygon(block_pose: np.ndarray, inflate: float):
    from shapely.geometry import Polygon

    world = _rotate(T_OUTLINE, np.full(len(T_OUTLINE), block_pose[2])) + block_pose[:2]
    return Polygon(world).buffer(inflate)


def approach_path(start: np.ndarray, goal: np.ndarray, block_pose: np.ndarray, clearance: float) -> list[np.ndarray]:
    """Waypoints from the agent to `goal` that keep the agent off the block: straight if that is clear, else along a
    circle about the block's centre to the side of the goal, then in."""
    from shapely.geometry import LineString

    keep_out = _block_polygon(block_pose, AGENT_RADIUS + clearance)
    if not LineString([start, goal]).intersects(keep_out):
        return [goal]
    centre = np.asarray(keep_out.centroid.coords[0])
    radius = np.max(np.linalg.norm(np.asarray(keep_out.exterior.coords) - centre, axis=1)) + 5.0
    a0 = np.arctan2(*(start - centre)[::-1])
    a1 = np.arctan2(*(goal - centre)[::-1])
    turn = (a1 - a0 + np.pi) % (2 * np.pi) - np.pi
    n = max(int(np.ceil(abs(turn) / (np.pi / 6))), 1)
    arc = [centre + radius * np.array([np.cos(a), np.sin(a)]) for a in a0 + turn * np.arange(n + 1) / n]
    return [np.clip(p, *ARENA) for p in arc] + [goal]


def _targets_along(start: np.ndarray, waypoints: list[np.ndarray], speed: float) -> list[np.ndarray]:
    """10 Hz target positions moving at `speed` px per step through the waypoints."""
    out, here = [], np.asarray(start, float)
    for w in waypoints:
        d = np.linalg.norm(w - here)
        n = max(int(np.ceil(d / speed)), 1)
        out += [here + (w - here) * (i + 1) / n for i in range(n)]
        here = w
    return out


class PushPlanner:
    """Plans pushes for `gym_pusht/PushT-v0` by simulating candidates in its own copy of the env."""

    def __init__(self, config: PlannerConfig | None = None):
        import gymnasium as gym
        import gym_pusht  # noqa: F401  (registers the env)

        self.config = c = config or PlannerConfig()
        self.sim = gym.make(pusht.ENV_ID, obs_type="state").unwrapped
        self.sim.reset(seed=0)
        self.rng = np.random.default_rng(c.seed)
        points, normals = _outline_contacts(c.contact_spacing)
        angles = np.asarray(c.push_angles)
        # every (contact point, angle, distance) combination, in the block frame
        self.contact = np.repeat(points, len(angles) * len(c.push_distances), 0)
        direction = _rotate(np.repeat(normals, len(angles), 0), np.tile(angles, len(points)))
        self.direction = np.repeat(direction, len(c.push_distances), 0)
        self.distance = np.tile(np.asarray(c.push_distances), len(points) * len(angles))

    def cost(self, block_pose: np.ndarray, coverage: float) -> float:
        """Distance to the goal pose (px / 100 + angle_weight * |angle| in radians) minus coverage. Weighting the angle
        like 200 px matters: with the mean vertex distance instead, a greedy planner stalls with the T turned the
        wrong way near the goal (no single push both turns and keeps it in place; 11 of 20 episodes vs 20 of 20)."""
        pos = np.linalg.norm(block_pose[:2] - pusht.GOAL_POSE[:2])
        ang = abs((block_pose[2] - pusht.GOAL_POSE[2] + np.pi) % (2 * np.pi) - np.pi)
        return float(pos / 100.0 + self.config.angle_weight * ang - coverage)

    def _set_sim(self, agent: np.ndarray, block_pose: np.ndarray) -> None:
        """The simulation env in this state, the agent at rest."""
        s = self.sim
        s.agent.position, s.agent.velocity = tuple(agent), (0.0, 0.0)
        s.block.position, s.block.angle = tuple(block_pose[:2]), float(block_pose[2])
        s.block.velocity, s.block.angular_velocity = (0.0, 0.0), 0.0
        s.space.reindex_shapes_for_body(s.agent)
        s.space.reindex_shapes_for_body(s.block)

    def push_targets(self, start: np.ndarray, direction: np.ndarray, distance: float) -> list[np.ndarray]:
        c = self.config
        end = start + direction * (c.clearance + distance)
        return _targets_along(start, [end], c.push_speed) + [end] * c.settle_steps

    def candidates(self, block_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World-frame pre-contact agent positions, push directions and distances of the feasible candidates."""
        from shapely import contains_xy

        theta = np.full(len(self.contact), block_pose[2])
        direction = _rotate(self.direction, theta)
        start = _rotate(self.contact, theta) + block_pose[:2] - direction * (AGENT_RADIUS + self.config.clearance)
        inside = (start >= ARENA[0]).all(1) & (start <= ARENA[1]).all(1)
        # a start inside the inflated block (the T's inner corners) would begin with a collision
        free = ~contains_xy(_block_polygon(block_pose, AGENT_RADIUS + 1.0), start[:, 0], start[:, 1])
        keep = inside & free
        return start[keep], direction[keep], self.distance[keep]

    def plan(self, block_pose: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """Best push from `block_pose` -> (pre-contact agent position, push targets); None if no push is feasible
        (the block pressed into a corner of the arena)."""
        starts, directions, distances = self.candidates(block_pose)
        if not len(starts):
            return None
        costs = np.empty(len(starts))
        for i, (start, direction, distance) in enumerate(zip(starts, directions, distances)):
            self._set_sim(start, block_pose)
            info = None
            for target in self.push_targets(start, direction, distance):
                *_, info = self.sim.step(target)
            pose = np.array([*self.sim.block.position, self.sim.block.angle])
            costs[i] = self.cost(pose, info["coverage"])
        best = np.flatnonzero(costs <= costs.min() + 1e-9)
        i = int(self.rng.choice(best))
        return starts[i], self.push_targets(starts[i], directions[i], distances[i])


def run_episode(planner: PushPlanner, seed: int, render: bool = True, start_state: np.ndarray | None = None) -> Episode:
    """One scripted episode of `gym_pusht/PushT-v0` from `seed` (the env's own reset draw) or from `start_state`
    (agent x, y, block x, y, angle)."""
    import gymnasium as gym

    c = planner.config
    env = gym.make(pusht.ENV_ID, obs_type="pixels_agent_pos" if render else "state")
    obs = env.reset(seed=seed)[0] if start_state is None else pusht.reset_to_state(env, start_state, seed)
    u, ep = env.unwrapped, Episode(seed=seed)

    def act(target: np.ndarray) -> bool:
        nonlocal obs
        ep.states.append(pusht.env_state(env))
        if render:
            ep.frames.append(obs["pixels"])  # the observation a pixel policy sees in this state
        ep.actions.append(np.asarray(target, float))
        obs, _, terminated, _, info = env.step(np.asarray(target, np.float32))
        ep.contacts.append(u.n_contact_points)
        ep.max_coverage = max(ep.max_coverage, info["coverage"])
        return terminated or len(ep.actions) >= c.max_steps

    done = False
    while not done:
        s = pusht.env_state(env)
        planned = planner.plan(s[2:])
        if planned is None:  # stuck: the episode ends as a failure
            break
        start, push = planned
        ep.pushes += 1
        route = approach_path(s[:2], start, s[2:], c.clearance)
        targets = _targets_along(s[:2], route, c.approach_speed)
        # hold the pre-contact point until the agent (a PD-controlled disc lagging its target) is there and slow:
        # the push was simulated from rest at that point
        for target in targets:
            if done := act(target):
                break
        for _ in range(c.max_settle_steps):
            if done or (np.linalg.norm(u.agent.position - start) < 2.0 and np.linalg.norm(u.agent.velocity) < 20.0):
                break
            done = act(start)
        for target in push:
            if done or (done := act(target)):
                break
    env.close()
    return ep


def episode_arrays(ep: Episode) -> dict[str, np.ndarray]:
    """An episode as replay-buffer arrays in the paper's layout (`img` only when frames were rendered)."""
    data = {"state": np.asarray(ep.states, np.float32), "action": np.asarray(ep.actions, np.float32),
            "n_contacts": np.asarray(ep.contacts, np.float32)[:, None]}
    if ep.frames:
        data["img"] = np.asarray(ep.frames, np.float32)
    return data


def first_states(seeds: Sequence[int], start_states: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """The first row a scripted episode records (agent x, y, block x, y, angle): the state gym-pusht resets to from
    each seed, or where each of `start_states` lands (`pusht.reset_to_state` takes one physics step, which can move
    the block by a fraction of a pixel), so a store's episodes are recognised by the states they really start from."""
    import gymnasium as gym
    import gym_pusht  # noqa: F401  (registers the env)

    env = gym.make(pusht.ENV_ID, obs_type="state")
    states = []
    for k, seed in enumerate(seeds):
        if start_states is None:
            env.reset(seed=seed)
        else:
            pusht.reset_to_state(env, start_states[k], seed)
        states.append(pusht.env_state(env))
    env.close()
    return np.array(states).reshape(-1, 5)


def _listed(values: list[int], most: int = 10) -> str:
    return ", ".join(map(str, values[:most])) + (f" ... ({len(values)} in all)" if len(values) > most else "")


def append_episode(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Append one episode's arrays to a replay buffer (created if missing)."""
    from sciddiff.policy.replay_buffer import ReplayBuffer

    path = Path(path)
    (ReplayBuffer.open(path, mode="a") if path.exists() else ReplayBuffer.create(path)).add_episode(arrays)


def write_episodes(path: str | Path, episodes: list[Episode]) -> None:
    """Append episodes to a replay buffer (created if missing), in the paper's layout."""
    for ep in episodes:
        append_episode(path, episode_arrays(ep))


def complete_episode(planner: PushPlanner, recorded: dict[str, np.ndarray], seed: int = 0,
                     render: bool = False) -> tuple[dict[str, np.ndarray], Episode]:
    """A recorded episode (replay-buffer arrays) followed by the planner's pushes from its last recorded state until
    coverage exceeds 0.95 -> (arrays, the planner's episode). The PushT human demonstrations stop just short of
    success (peak coverage ~0.90), so no demonstration shows the last push; this appends one. The planner starts from
    that state at rest, so its first row replaces the recording's last one (whose action never took effect): each
    state appears once, with the action taken there. When the planner fails, the recording comes back unchanged."""
    ep = run_episode(planner, seed, render=render, start_state=np.asarray(recorded["state"][-1], float))
    if not ep.success:
        return dict(recorded), ep
    added = episode_arrays(ep)
    return {k: np.concatenate([np.asarray(v[:-1], np.float32), added[k]]) for k, v in recorded.items()}, ep


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--out", type=Path, required=True, help="zarr replay buffer to create or append to")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes to write (default 10), or with --complete the first N recorded ones (default all)")
    p.add_argument("--seed", type=int, default=0, help="first env seed (episodes use seed, seed+1, ...)")
    p.add_argument("--complete", type=Path, default=None, metavar="ZARR",
                   help="instead of new episodes, copy each episode of this replay buffer (e.g. the human PushT "
                        "demonstrations, which stop short of success) and append the planner's pushes from its last "
                        "state until coverage > 0.95 (episodes it cannot finish are copied unchanged)")
    p.add_argument("--from-policy", type=Path, default=None, metavar="CHECKPOINT",
                   help="DAgger: roll this policy out on --episodes seeds from --seed and start the planner from the "
                        "states its failed episodes reach at --restart-steps (sciddiff.policy.dagger)")
    p.add_argument("--restart-steps", default=None, metavar="T1,T2,...",
                   help="with --from-policy: env steps of a failed episode whose states the planner starts from "
                        "(default 0,100)")
    p.add_argument("--max-steps", type=int, default=PlannerConfig.max_steps,
                   help=f"env steps per planner episode (default {PlannerConfig.max_steps})")
    p.add_argument("--no-images", action="store_true", help="skip data/img (state-only demonstrations, ~2x faster)")
    p.add_argument("--keep-failures", action="store_true", help="also write episodes that never reached 0.95")
    p.add_argument("--metrics-json", type=Path, default=None, help="write the summary and per-episode rows here")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for the --from-policy rollouts (default: 2 on two idle cores, else 1)")
    return p


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m sciddiff.policy.scripted", description=__doc__,
                                                 formatter_class=argparse.RawDescriptionHelpFormatter))


def run_demos(args: argparse.Namespace) -> int:
    from sciddiff.policy.replay_buffer import ReplayBuffer
    from sciddiff.train.log import progress

    if args.complete and Path(args.complete).resolve() == Path(args.out).resolve():
        raise UserError("--complete and --out must be different stores (the copies are appended to --out)")
    if args.complete and args.from_policy:
        raise UserError("--complete and --from-policy are alternatives; give one")
    if args.restart_steps is not None and not args.from_policy:
        raise UserError("--restart-steps needs --from-policy (the failed episodes it restarts from)")
    check_output_path(args.out, folder=True)
    if args.metrics_json:
        check_output_path(args.metrics_json, option="--metrics-json")
    try:
        restart_steps = [int(t) for t in (args.restart_steps or "0,100").split(",")]
        if min(restart_steps) < 0:
            raise ValueError
    except ValueError:
        raise UserError(f"--restart-steps must be comma-separated integers >= 0 (steps into an episode), got "
                        f"{args.restart_steps!r}") from None
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    source = ReplayBuffer.open(args.complete) if args.complete else None
    if source:  # shapes and values checked now: a bad row would fail (or be copied) only when its episode comes
        source_starts = pusht_store_arrays(source, args.complete)[0]["state"][episode_starts(source.episode_ends)]
    if args.episodes is None:
        args.episodes = source.n_episodes if source else 10
    if bad := options_below(args, 1, "episodes", "max_steps", "threads"):
        raise UserError(f"{bad[0]} must be at least 1")
    want = sorted(["action", "n_contacts", "state"] + ([] if args.no_images else ["img"]))
    if source and (missing := set(want) - set(source.keys)):
        hint = " (add --no-images for state-only episodes)" if missing == {"img"} else ""
        raise UserError(f"{args.complete} has {source.keys}, which lacks {sorted(missing)}{hint}")
    stored = np.zeros((0, 5))  # the first states of the episodes --out already holds
    if Path(args.out).exists():  # appending: the episodes must have the store's arrays (checked before any work)
        target = ReplayBuffer.open(args.out)
        if target.keys and target.keys != want:
            other = sorted(set(want) ^ {"img"})  # what the other choice of --no-images would write
            hint = f"{'drop' if args.no_images else 'add'} --no-images or " if target.keys == other else ""
            raise UserError(f"{args.out} holds {target.keys}; these episodes would have {want} "
                            f"({hint}choose another --out)")
        if target.n_episodes:
            stored = pusht_store_arrays(target, args.out)[0]["state"][episode_starts(target.episode_ends)]
    planner = PushPlanner(PlannerConfig(max_steps=args.max_steps, seed=args.seed))
    seeds = range(args.seed, args.seed + args.episodes)
    if source:
        episodes, desc = [(i, None) for i in range(min(args.episodes, source.n_episodes))], "completing demos"
    elif args.from_policy:
        import torch

        from sciddiff.policy.cli import load_checkpoint_or_fail
        from sciddiff.policy.dagger import failure_start_states

        policy = load_checkpoint_or_fail(args.from_policy)  # one clear line for a missing or foreign file
        torch.set_num_threads(idle_threads() if args.threads is None else args.threads)
        episodes, rollout = failure_start_states(policy, seeds, restart_steps)
        episodes, desc = [(seed, (step, state)) for seed, step, state in episodes], "corrective demos"
        print(f"{args.from_policy}: {rollout['success_rate']:.1%} success on {len(seeds)} episodes; "
              f"{len(episodes)} start states", flush=True)
        if not episodes:
            print(f"no failed episode to correct: nothing written to {args.out}", file=sys.stderr)
            if args.metrics_json:  # the rollout is the run's result
                from sciddiff.train.checkpoint import write_json

                write_json(args.metrics_json, {"episodes": 0, "written": 0, "out": None,
                                               "from_policy": str(args.from_policy), "restart_steps": restart_steps,
                                               "policy_rollout": rollout})
            return 0
    else:
        episodes, desc = [(i, None) for i in seeds], "scripted demos"
    if len(stored):  # the store records no seeds: an episode is known by its first state
        ids = [i for i, _ in episodes]
        starts = (source_starts[:len(ids)] if source else
                  first_states(ids, [state for _, (_, state) in episodes] if args.from_policy else None))
        done = len(stored)
        if source and done <= len(ids) and np.isclose(stored, starts[:done], atol=1e-3).all():
            # an interrupted --complete run (its store holds these episodes' first ones, in order): continue it
            print_note(f"{args.out} already holds the completions of the first {done} of these {len(ids)} episodes "
                       f"of {args.complete}: continuing after them")
            episodes = episodes[done:]
        elif again := list(dict.fromkeys(  # a seed's restarts share its id
                i for i, start in zip(ids, starts) if np.isclose(stored, start, atol=1e-3).all(1).any())):
            what = f"episode(s) {_listed(again)} of {args.complete}" if source else f"seed(s) {_listed(again)}"
            hint = "" if source else f"continue with --seed {max(again) + 1} or "
            raise UserError(f"{args.out} already holds the episodes of {what} (the same start states): {hint}choose "
                            f"another --out rather than append duplicates")
    rows, written, t0 = [], 0, time.perf_counter()
    bar = progress(episodes, desc=desc, unit="episode")
    for i, start in bar:
        t = time.perf_counter()
        if source:  # one episode at a time: an interrupted run keeps what it finished
            arrays, ep = complete_episode(planner, source.get_episode(i, want), args.seed + i, not args.no_images)
            append_episode(args.out, arrays)
            written += 1
        else:
            ep = run_episode(planner, i, render=not args.no_images, start_state=None if start is None else start[1])
            if ep.success or args.keep_failures:
                write_episodes(args.out, [ep])
                written += 1
        rows.append({"episode" if source else "seed": i, "max_coverage": round(ep.max_coverage, 4),
                     "success": ep.success, "steps": len(ep.actions), "pushes": ep.pushes,
                     "seconds": round(time.perf_counter() - t, 2)} | ({} if start is None else {"from_step": start[0]}))
        bar.set_postfix(success=f"{np.mean([r['success'] for r in rows]):.0%}")

    def mean(key: str) -> float | None:  # None (JSON null): no episode left to run
        return float(np.mean([r[key] for r in rows])) if rows else None

    summary = {"episodes": len(rows), "success_rate": mean("success"), "mean_max_coverage": mean("max_coverage"),
               "mean_steps": mean("steps"), "seconds_per_episode": (time.perf_counter() - t0) / len(rows) if rows
               else None, "written": written, "out": str(args.out) if written else None, "per_episode": rows}
    if source:
        summary["completed_from"] = str(args.complete)
    if args.from_policy:
        summary.update(from_policy=str(args.from_policy), restart_steps=restart_steps, policy_rollout=rollout)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_episode"}))
    if rows and not written:
        print(f"no episode reached coverage 0.95: nothing written to {args.out} (--keep-failures writes them)",
              file=sys.stderr)
    if args.metrics_json:
        from sciddiff.train.checkpoint import write_json

        write_json(args.metrics_json, summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    from sciddiff.cli import run_command

    return run_command(run_demos, build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
