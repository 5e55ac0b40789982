"""Corrective demonstrations on the states a policy itself visits (DAgger, Ross et al. 2011).

A policy trained on demonstrations drifts into states the demonstrations never show and can stall there: the PushT
state policy trained on demonstrations alone lost 6.3% of episodes with the agent hovering in place and the T never
touching the goal; rounds of this (each on the previous round's policy) brought that to ~2% (docs/policy.md).
DAgger asks an expert what to do in the learner's own states. Here the learner's failed episodes are rolled
out (`runner.run_episodes(record_states=True)`), and the simulator states at chosen steps of them become start
states for the scripted planner (`sciddiff.policy.scripted`), whose episodes from there are new demonstrations.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sciddiff.policy.policy import DiffusionPolicy


StartState = tuple[int, int, np.ndarray]  # (seed, env step, simulator state)


def failure_start_states(policy: DiffusionPolicy, seeds: Sequence[int], restart_steps: Sequence[int],
                         batch_size: int = 10, show_progress: bool = True) -> tuple[list[StartState], dict]:
    """Roll `policy` out (frozen for CPU inference) from `seeds`; for every episode that does not succeed, the
    simulator state (agent x, y, block x, y, angle) before each step in `restart_steps`
    -> ([(seed, step, state), ...], the rollout's summary)."""
    from sciddiff.policy.evaluate import rollout_pusht
    from sciddiff.policy.runner import summarize

    results = rollout_pusht(policy, seeds, batch_size=batch_size, show_progress=show_progress, record_states=True)
    starts = [(r.seed, t, r.states[t]) for r in results if not r.success for t in restart_steps if t < len(r.states)]
    return starts, summarize(results)
