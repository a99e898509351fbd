"""Replay buffer for bilevel agents: keeps TRUE rewards beside the learned ones and relabels.

The inner learner must always see the current learned reward (PEBBLE, DESIGN.md section 5), so
after every reward-model update :meth:`BilevelReplayBuffer.relabel` recomputes every stored
reward in batched forward passes.  The environment's own rewards (``info["true_reward"]``, set
by :class:`envs.reward_wrapper.VecParameterisedReward`) are kept in ``true_rewards``: they are
what a synthetic teacher labels, never the learned ones.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer

from envs.reward_wrapper import batch_rewards

__all__ = ["BilevelReplayBuffer"]


class BilevelReplayBuffer(ReplayBuffer):
    """SB3 :class:`ReplayBuffer` plus ``true_rewards`` and batched reward relabelling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.true_rewards = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    def add(self, obs, next_obs, action, reward, done, infos: List[Dict[str, Any]]) -> None:
        self.true_rewards[self.pos] = np.array(
            [info.get("true_reward", r) for info, r in zip(infos, np.asarray(reward).reshape(-1))], dtype=np.float32
        )
        super().add(obs, next_obs, action, reward, done, infos)

    def _next_obs(self, idx: np.ndarray) -> np.ndarray:
        if self.optimize_memory_usage:
            return self.observations[(idx + 1) % self.buffer_size]
        return self.next_observations[idx]

    def window(self, idx: np.ndarray) -> Dict[str, np.ndarray]:
        """Rows ``idx`` (time-ordered) as arrays ``[T, n_envs, ...]`` for segment sampling.

        ``dones`` mark every episode end (termination or truncation), ``terminations`` the ends
        by termination only (what absorbing-state fragments may run past); ``acts`` are as stored
        (scaled to [-1, 1] for ``Box`` under SAC).
        """
        dones = self.dones[idx]
        timeouts = self.timeouts[idx] if self.handle_timeout_termination else np.zeros_like(dones)
        return {
            "obs": self.observations[idx],
            "next_obs": self._next_obs(idx),
            "acts": self.actions[idx],
            "true_rewards": self.true_rewards[idx],
            "dones": dones,
            "terminations": (dones > 0) & ~(timeouts > 0),
        }

    def relabel(self, reward_model: th.nn.Module, to_env_actions: Callable[[np.ndarray], np.ndarray], batch_size: int = 8192) -> None:
        """Recompute every stored reward with ``reward_model`` (batched, no gradients).

        ``to_env_actions`` maps stored actions to the env's units (what the reward model saw
        when the transition was collected).
        """
        n = self.size()
        rows_per_batch = max(1, batch_size // self.n_envs)
        for start in range(0, n, rows_per_batch):
            idx = np.arange(start, min(n, start + rows_per_batch))
            flat = lambda a: a.reshape((-1,) + a.shape[2:])  # noqa: E731
            acts = to_env_actions(flat(self.actions[idx]))
            if self.action_space.shape == ():  # Discrete: SB3 stores [n, n_envs, 1]
                acts = acts.reshape(-1)
            r = batch_rewards(
                reward_model, flat(self.observations[idx]), acts, flat(self._next_obs(idx)), self.observation_space, self.action_space
            )
            self.rewards[idx] = r.reshape(len(idx), self.n_envs)
