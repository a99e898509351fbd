"""The ``branch`` estimator for deep agents: soft ``Q - V`` differences from branched rollouts.

DESIGN.md section 2 / seed 003 ("Construction of estimators"): at a visited pair ``(s_h, a_h)``

    grad(Q - V)(s_h, a_h) ~ sum_t gamma^t grad r(s'_t, a'_t)  [rollout from s_h starting with a_h]
                          - sum_t gamma^t grad r(s''_t, a''_t) [rollout from s_h starting with a ~ pi]

with both rollouts fresh, i.e. independent of the segment the loss ``l`` was computed on (reusing
the segment's own future would be biased: :mod:`birl.hypergrad`, ``same_trajectory``).  Here
``grad`` is taken with respect to the reward model's last layer (as for ``successor``) and the
rollouts are truncated after ``branch_horizon`` steps.

To restart from ``s_h`` the agent keeps a snapshot of every sub-environment for each of the most
recent replay rows (:class:`SnapshotLog`, filled while collecting).  Rollouts step the innermost
env (``env.unwrapped``), so SB3's ``Monitor`` and time limits never see them, and every env is
restored to its current state afterwards.  Requires a ``DummyVecEnv`` of clonable envs
(:mod:`envs.cloning`: tabular, MuJoCo, ALE) without observation wrappers.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch as th
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from envs.cloning import can_clone, get_cloner

__all__ = ["SnapshotLog", "check_branchable", "branch_rollout_gradient"]


def _dummy(venv: VecEnv) -> DummyVecEnv:
    while isinstance(venv, VecEnvWrapper):
        venv = venv.venv
    if not isinstance(venv, DummyVecEnv):
        raise ValueError(f"estimator='branch' needs a DummyVecEnv (snapshots are taken in-process), got {type(venv).__name__}")
    return venv


def check_branchable(venv: VecEnv) -> None:
    """Raise ``ValueError`` at construction when the envs cannot be branched."""
    for i, env in enumerate(_dummy(venv).envs):
        if not can_clone(env):
            raise ValueError(
                f"estimator='branch' needs envs whose state can be cloned (tabular, MuJoCo, ALE); "
                f"sub-env {i} ({type(env.unwrapped).__name__}) cannot: use 'successor' or 'myopic'"
            )
        if env.observation_space != env.unwrapped.observation_space:
            raise ValueError(
                f"estimator='branch' steps the innermost env, so observation wrappers are not supported; "
                f"sub-env {i} changes {env.unwrapped.observation_space} into {env.observation_space}"
            )


class SnapshotLog:
    """Snapshots of every sub-env, keyed by the replay row whose observation they produced."""

    def __init__(self, venv: VecEnv, keep: int) -> None:
        self.envs = _dummy(venv).envs
        self.cloners = [get_cloner(e) for e in self.envs]
        self.keep = int(keep)
        self._snaps: Dict[int, List[Any]] = {}
        self._order: List[int] = []

    def record(self, row: int) -> None:
        """Snapshot the envs' current states as the states of replay row ``row``."""
        if row not in self._snaps:
            self._order.append(row)
        self._snaps[row] = [c.clone(e) for c, e in zip(self.cloners, self.envs)]
        while len(self._order) > self.keep:
            self._snaps.pop(self._order.pop(0), None)

    def get(self, row: int, env_id: int) -> Any:
        if row not in self._snaps:
            raise KeyError(f"no snapshot for replay row {row}: only the {self.keep} most recent rows are kept")
        return self._snaps[row][env_id]

    def current(self) -> List[Any]:
        return [c.clone(e) for c, e in zip(self.cloners, self.envs)]

    def restore_all(self, snaps: List[Any]) -> None:
        for c, e, s in zip(self.cloners, self.envs, snaps):
            c.restore(e, s)


def branch_rollout_gradient(
    log: SnapshotLog,
    env_id: int,
    snapshot: Any,
    obs: np.ndarray,
    first_action: Optional[np.ndarray],
    policy_action: Callable[[np.ndarray], np.ndarray],
    head_gradient: Callable[[np.ndarray, np.ndarray, np.ndarray], th.Tensor],
    gamma: float,
    horizon: int,
    rng: np.random.Generator,
) -> th.Tensor:
    """``sum_t gamma^t grad_w r(s_t, a_t, s_{t+1})`` along one rollout restarted from ``snapshot``.

    ``obs`` is the observation of the restored state; ``first_action`` (env units) or, if None,
    ``policy_action(obs)`` starts the rollout, which then follows ``policy_action``.  The env's
    ``np_random`` is reseeded from ``rng`` so the rollout is independent of the recorded segment
    (an emulator's internal RNG, e.g. ALE sticky actions, stays as restored).
    """
    env, cloner = log.envs[env_id], log.cloners[env_id]
    cloner.restore(env, snapshot)
    core = env.unwrapped
    # the snapshot restored the env's RNG too: without fresh randomness the rollout would replay the
    # segment's own next state, the biased same-trajectory shortcut (birl.hypergrad)
    core.np_random = np.random.default_rng(int(rng.integers(2**63)))
    obs = np.asarray(obs).reshape(core.observation_space.shape)  # replay rows store Discrete obs as [1]
    states, actions, next_states = [], [], []
    for t in range(horizon):
        action = first_action if (t == 0 and first_action is not None) else policy_action(obs)
        next_obs, _, terminated, _, _ = core.step(action)
        states.append(obs)
        actions.append(np.asarray(action))
        next_states.append(next_obs)
        if terminated:
            break
        obs = next_obs
    grads = head_gradient(np.stack(states), np.stack(actions), np.stack(next_states))  # [T, k]
    discounts = th.as_tensor(gamma ** np.arange(len(states)), dtype=grads.dtype, device=grads.device)
    return (discounts[:, None] * grads).sum(0)
