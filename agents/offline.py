"""Offline ML-IRL with a learned (generative) world model: :class:`OfflineMLIRL`.

Seed 002 (the ML-IRL part, and its reference Zeng, Li, Garcia & Hong, "When Demonstrations Meet
Generative World Models: A Maximum Likelihood Framework for Offline Inverse Reinforcement
Learning", NeurIPS 2023) poses, from a FIXED dataset and without any environment interaction,

    max_theta  L(theta) = E_{(s, a) ~ D_E} [ log pi*_theta(a|s) ]                       (ML-BLO)
    s.t.       pi*_theta = argmax_pi E_{P_hat, pi} [ sum_t gamma^t ( r_theta(s_t, a_t) - lambda U(s_t, a_t) ) + H(pi) ]

where ``P_hat`` is a world model fitted on the dataset and ``U`` a penalty on its uncertainty
(the lower level is solved in a *conservative* model MDP).  The gradient is the ML-IRL
contrast of seed 002 ("Approximate Gradient Computation"), which in the per-state form of
DESIGN.md section 1 reads

    grad_theta L = (1/tau) E_{(s, a) ~ D_E} [ grad_theta (Q* - V*)(s, a) ]

(``U`` does not depend on ``theta``, so it only enters through ``pi*``).  This module reuses
M-SoBiRL (:class:`agents.msobirl.MSoBiRL`) for every piece:

* **World model.**  The :class:`birl.dynamics.GaussianEnsemble` is fitted ONCE on the dataset
  (expert transitions plus optional extra, e.g. non-expert, transitions); the dataset is fixed,
  so it is never refitted.
* **Inner level (lower problem).**  SAC on a replay buffer filled once from the dataset (rewards
  relabelled with ``r_theta`` after every reward update) mixed, ``real_ratio`` dataset to
  ``1 - real_ratio`` model, with MBPO-style model rollouts that START FROM DATASET STATES.
  Model transitions are rewarded ``r_theta(s, a, s') - lambda U(s, a)`` (MOPO-style penalty,
  Yu et al. 2020), with ``U`` chosen by ``uncertainty``:

  * ``"disagreement"`` (default): ``U = max_e || mu_e(s, a) - mean_e' mu_e'(s, a) ||_2``, the
    largest deviation of an elite member's mean state change from the elite average
    (epistemic disagreement);
  * ``"max_std"``: ``U = max_e || sigma_e(s, a) ||_2`` over elites (MOPO's aleatoric variant).

  Both are measured in the ensemble's standardised units of ``s' - s`` (each coordinate
  divided by its dataset standard deviation), so ``lambda`` does not depend on the scale of
  the observation coordinates.  The penalty is stored beside each model transition and
  re-applied after every relabelling.
* **Outer level (upper problem).**  The ``model`` estimator of M-SoBiRL
  (``_demo_surrogate`` -> ``_one_step_advantage`` -> branched ``Q - V`` rollouts inside the
  learned model), on minibatches of the EXPERT transitions only.

``learn(total_steps)`` never calls ``env.step``: :meth:`OfflineMLIRL.collect_rollouts` replaces
SB3's data collection by *virtual* steps.  Each virtual step advances ``num_timesteps``, runs the
callbacks and then SB3's loop calls :meth:`train`, which (as in M-SoBiRL, counted in virtual
steps) generates model rollouts every ``model_rollout_freq`` steps, takes an outer (reward) step
every ``outer_freq`` steps and takes ``gradient_steps`` SAC updates.  The env is used for its
spaces (and ``reset`` once, by SB3's ``_setup_learn``); evaluate the policy on it afterwards.

Logging: there are no episodes, so ``log_interval`` counts OUTER steps (logs are written after
every ``log_interval``-th outer step and at the end of ``learn``).

Datasets: :class:`birl.feedback.Demonstrations` (``Demonstrations.load("file.npz")``,
``Demonstrations.collect(...)``) or, when the optional ``minari`` package is installed, a local
Minari dataset (:func:`load_dataset`).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Optional, Union

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.type_aliases import RolloutReturn, TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.vec_env import VecEnv

from agents.msobirl import MSoBiRL, ModelReplayBuffer, rollout_length
from birl.feedback import Demonstrations

__all__ = ["OfflineMLIRL", "PenalisedModelReplayBuffer", "load_dataset", "check_dataset", "UNCERTAINTIES"]

UNCERTAINTIES = ("disagreement", "max_std")
_NEVER = sys.maxsize  # model_train_freq: the dataset is fixed, the ensemble is fitted once


def load_dataset(source: str) -> Demonstrations:
    """A :class:`Demonstrations` from a ``.npz`` file written by ``Demonstrations.save`` or, for
    any other string, from a LOCAL Minari dataset id (needs the optional ``minari`` package;
    nothing is downloaded)."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a file path or a Minari dataset id, got {source!r}")
    if source.endswith(".npz"):
        return Demonstrations.load(source)
    return Demonstrations.from_minari(source)


def check_dataset(name: str, data: Any, observation_space: spaces.Space, action_space: spaces.Space) -> Demonstrations:
    """Validate a dataset against the env's spaces; raises ``TypeError``/``ValueError`` naming ``name``.

    Requires a non-empty :class:`Demonstrations` with finite arrays whose per-step observation
    shape equals ``observation_space.shape`` and whose per-step action size equals the action
    space's (``[T]`` actions for a one-dimensional action space are accepted).
    """
    if not isinstance(data, Demonstrations):
        raise TypeError(f"{name} must be a birl.feedback.Demonstrations (see agents.offline.load_dataset), got {type(data).__name__}")
    if len(data) == 0 or data.n_transitions == 0:
        raise ValueError(f"{name} is empty: it holds {len(data)} trajectories and {data.n_transitions} transitions")
    obs_shape, act_shape = tuple(observation_space.shape), tuple(action_space.shape)
    for i, t in enumerate(data):
        if tuple(t.obs.shape[1:]) != obs_shape:
            raise ValueError(f"{name}: trajectory {i} has observations of shape {tuple(t.obs.shape[1:])}, "
                             f"the env's observation space has shape {obs_shape}")
        if int(np.prod(t.acts.shape[1:])) != int(np.prod(act_shape)):
            raise ValueError(f"{name}: trajectory {i} has actions of shape {tuple(t.acts.shape[1:])}, "
                             f"the env's action space has shape {act_shape}")
        if not (np.all(np.isfinite(t.obs)) and np.all(np.isfinite(t.acts))):
            raise ValueError(f"{name}: trajectory {i} has non-finite observations or actions")
    return data


class PenalisedModelReplayBuffer(ModelReplayBuffer):
    """Model replay buffer that keeps each transition's uncertainty ``U(s, a)`` and stores the
    penalised reward ``r_theta - penalty_coef * U``, also after every :meth:`relabel`."""

    def __init__(self, *args: Any, penalty_coef: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.penalty_coef = float(penalty_coef)
        self.penalties = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)

    def add_batch(self, obs, next_obs, actions, rewards, dones, penalties: Optional[np.ndarray] = None) -> None:
        """``rewards`` are the UNpenalised learned rewards; ``penalties`` the ``U(s, a)`` values."""
        n = obs.shape[0]
        pen = np.zeros(n, np.float32) if penalties is None else np.asarray(penalties, np.float32).reshape(n)
        idx = (self.pos + np.arange(n)) % self.buffer_size
        super().add_batch(obs, next_obs, actions, np.asarray(rewards, np.float32).reshape(n) - self.penalty_coef * pen, dones)
        self.penalties[idx, 0] = pen

    def relabel(self, reward_model, to_env_actions, batch_size: int = 8192) -> None:
        super().relabel(reward_model, to_env_actions, batch_size)
        n = self.size()
        self.rewards[:n] -= self.penalty_coef * self.penalties[:n]


class OfflineMLIRL(MSoBiRL):
    """Offline ML-IRL: ML-IRL reward learning and SAC inside a learned, uncertainty-penalised
    world model, from a fixed dataset only (module docstring).  ``Box`` actions, flat ``Box``
    observations, a single env (used for its spaces only).

    Args:
        policy: SAC policy (``"MlpPolicy"``).
        env: an env or env id; only its spaces are used (``env.step`` is never called by ``learn``).
        feedback: the EXPERT :class:`birl.feedback.Demonstrations` (ML-IRL loss; also in the
            replay buffer and the world model's training data).
        offline_data: optional extra :class:`birl.feedback.Demonstrations` (e.g. non-expert
            trajectories): replay buffer and world model only, not the ML-IRL loss.
        uncertainty: ``"disagreement"`` (default) or ``"max_std"`` (module docstring).
        penalty_coef: ``lambda >= 0`` of the penalised model reward (0 switches it off).
        real_ratio: fraction of dataset transitions in each SAC batch (the rest from the model).
        rollout_schedule: model rollout length schedule in virtual steps (default: 5 throughout).
        model_rollout_freq, rollout_batch_size, model_retain, dynamics_kwargs, model_fit_kwargs,
        branch_horizon, branch_rollouts, branch_steps: as in :class:`agents.msobirl.MSoBiRL`.
        **kwargs: :class:`agents.sobirl.SoBiRL` / SB3 ``SAC`` arguments (``outer_freq``,
            ``reward_steps``, ``demo_batch_size``, ``batch_size``, ``seed`` ...).  ``buffer_size``
            defaults to the dataset size; ``learning_starts`` to 0; ``estimator`` must be
            ``"model"`` (default) or another demonstration estimator of SoBiRL.

    Raises at construction: ``TypeError``/``ValueError`` for a missing, empty or mismatched
    dataset (shapes against the env's spaces), a non-single env, a bad ``uncertainty`` or
    ``penalty_coef``, or ``model_train_freq`` (the ensemble is fitted once on the fixed data).
    """

    #: ``penalty_coef`` is in the raw learned reward's units, so model rewards are not rescaled
    supports_reward_scaling = False

    def __init__(self, policy, env, feedback=None, offline_data: Optional[Demonstrations] = None,
                 uncertainty: str = "disagreement", penalty_coef: float = 1.0, **kwargs: Any) -> None:
        constructing = kwargs.get("_init_setup_model", True)
        if constructing:
            if isinstance(env, str):
                env = gym.make(env)
            if env is None:
                raise ValueError("env is required: its observation and action spaces define the agent")
            if isinstance(env, VecEnv) and env.num_envs != 1:
                raise ValueError(f"env: {type(self).__name__} needs a single env (its spaces only), got a VecEnv with {env.num_envs} envs")
            if not isinstance(env.action_space, spaces.Box):
                raise ValueError(f"env: {type(self).__name__} needs a Box action space, got {env.action_space}")
            if feedback is None:
                raise ValueError("feedback is required: pass the expert birl.feedback.Demonstrations (the ML-IRL data)")
            check_dataset("feedback", feedback, env.observation_space, env.action_space)
            if offline_data is not None:
                check_dataset("offline_data", offline_data, env.observation_space, env.action_space)
            if uncertainty not in UNCERTAINTIES:
                raise ValueError(f"uncertainty must be one of {UNCERTAINTIES}, got {uncertainty!r}")
            if isinstance(penalty_coef, bool) or not np.isfinite(penalty_coef) or penalty_coef < 0:
                raise ValueError(f"penalty_coef must be a finite number >= 0, got {penalty_coef!r}")
            if "model_train_freq" in kwargs:
                raise ValueError("model_train_freq is not an argument of OfflineMLIRL: the world model is fitted once on the fixed dataset")
            n_data = feedback.n_transitions + (0 if offline_data is None else offline_data.n_transitions)
            kwargs.setdefault("buffer_size", n_data)
            if kwargs["buffer_size"] < n_data:
                raise ValueError(f"buffer_size must hold the whole dataset ({n_data} transitions), got {kwargs['buffer_size']}")
            kwargs.setdefault("learning_starts", 0)
            kwargs.setdefault("rollout_schedule", (0, 0, 5, 5))
            kwargs.setdefault("real_ratio", 0.5)
            kwargs["model_train_freq"] = _NEVER
            self.offline_data, self.uncertainty, self.penalty_coef = offline_data, uncertainty, float(penalty_coef)
        super().__init__(policy, env, feedback=feedback, **kwargs)

    # ------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        super()._setup_model()
        # the model buffer keeps the uncertainty of every model transition
        old = self.model_buffer
        self.model_buffer = PenalisedModelReplayBuffer(old.buffer_size, self.observation_space, self.action_space, self.device,
                                                       n_envs=1, handle_timeout_termination=False, penalty_coef=self.penalty_coef)

    def _wrap_reward_env(self) -> None:
        if self.env.num_envs != 1:
            raise ValueError(f"env: {type(self).__name__} needs a single env, got {self.env.num_envs}")
        super()._wrap_reward_env()

    def _dataset(self) -> dict:
        """Expert (and extra) transitions as flat arrays; actions in env units ``[N, act_dim]``."""
        parts = [self.feedback.transitions()] + ([self.offline_data.transitions()] if self.offline_data is not None else [])
        data = {k: np.concatenate([p[k] for p in parts]) for k in ("obs", "acts", "next_obs", "rewards", "dones", "terminated")}
        data["acts"] = data["acts"].reshape(len(data["acts"]), -1).astype(np.float32)
        return data

    def fill_replay_buffer(self) -> int:
        """Write the whole dataset into the (empty) replay buffer and relabel it with ``r_theta``;
        returns the number of transitions.  Called by ``learn`` when the buffer is empty (first
        call, and after ``load``)."""
        buf = self.replay_buffer
        data = self._dataset()
        n = len(data["obs"])
        if n > buf.buffer_size:
            raise ValueError(f"buffer_size ({buf.buffer_size}) is smaller than the dataset ({n} transitions)")
        low, high = self.action_space.low.reshape(-1), self.action_space.high.reshape(-1)
        acts = data["acts"]
        if np.any(acts < low - 1e-6) or np.any(acts > high + 1e-6):
            warnings.warn(f"dataset actions outside the action space {self.action_space} were clipped", RuntimeWarning, stacklevel=2)
            acts = np.clip(acts, low, high)
        buf.observations[:n, 0] = data["obs"].reshape((n,) + buf.obs_shape)
        buf.next_observations[:n, 0] = data["next_obs"].reshape((n,) + buf.obs_shape)
        buf.actions[:n, 0] = self._buffer_actions(acts.reshape((n,) + self.action_space.shape)).reshape(n, buf.action_dim)
        buf.true_rewards[:n, 0] = data["rewards"]
        buf.dones[:n, 0] = data["dones"]
        if buf.handle_timeout_termination:  # an episode end that is not a termination bootstraps
            buf.timeouts[:n, 0] = data["dones"] & ~data["terminated"]
        else:
            buf.dones[:n, 0] = data["terminated"]
        buf.pos, buf.full = n % buf.buffer_size, n == buf.buffer_size
        buf.relabel(self.reward_model, self._env_actions, self.relabel_batch_size)
        return n

    def _setup_learn(self, total_timesteps: int, *args, **kwargs):
        out = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self._n_real() == 0:
            self.fill_replay_buffer()
        return out

    # ------------------------------------------------------------------ virtual data collection
    def collect_rollouts(self, env: VecEnv, callback: BaseCallback, train_freq: TrainFreq, replay_buffer: ReplayBuffer,
                         action_noise: Optional[ActionNoise] = None, learning_starts: int = 0,
                         log_interval: Optional[int] = None) -> RolloutReturn:
        """SB3's data collection, without the env: ``train_freq`` virtual steps (an ``episode``
        unit counts as one step each).  Each advances ``num_timesteps`` and runs the callbacks;
        nothing is stored (the replay buffer holds the fixed dataset)."""
        self.policy.set_training_mode(False)
        n_steps = int(train_freq.frequency)
        callback.on_rollout_start()
        for done_steps in range(n_steps):
            self.num_timesteps += 1
            callback.update_locals(locals())
            if not callback.on_step():
                return RolloutReturn(done_steps + 1, 0, continue_training=False)
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
            self._on_step()
        callback.on_rollout_end()
        self._log_interval = log_interval
        return RolloutReturn(n_steps, 0, continue_training=True)

    def learn(self, total_timesteps: int, callback=None, log_interval: int = 4, tb_log_name: str = "OfflineMLIRL",
              reset_num_timesteps: bool = True, progress_bar: bool = False):
        """Train for ``total_timesteps`` virtual steps (no env interaction); ``log_interval``
        counts outer steps."""
        out = super().learn(total_timesteps, callback=callback, log_interval=log_interval, tb_log_name=tb_log_name,
                            reset_num_timesteps=reset_num_timesteps, progress_bar=progress_bar)
        if log_interval is not None:
            self.dump_logs()
        return out

    # ------------------------------------------------------------------ inner level
    @th.no_grad()
    def model_uncertainty(self, obs: th.Tensor, buffer_act: th.Tensor) -> th.Tensor:
        """``U(s, a)`` ``[B]`` of the elite members (``uncertainty``; standardised ``s' - s`` units)."""
        mean, logvar, _ = self.dynamics(obs.float(), buffer_act.reshape(buffer_act.shape[0], -1).float())
        el = self.dynamics.elites
        mean, logvar = mean[el], logvar[el]
        if self.uncertainty == "max_std":
            return th.exp(logvar).sum(-1).sqrt().amax(0)
        return (mean - mean.mean(0, keepdim=True)).norm(dim=-1).amax(0)

    @th.no_grad()
    def generate_model_rollouts(self) -> int:
        """MBPO rollouts from dataset states, rewarded ``r_theta - penalty_coef * U`` (module docstring)."""
        k = rollout_length(self.num_timesteps, self.rollout_schedule)
        start = self.replay_buffer.sample(self.rollout_batch_size, env=self._vec_normalize_env).observations
        ro = self.model_env().rollout(start, self._policy_sample, k)
        obs, act, nxt, rew, term = ro.flat()
        pen = self.model_uncertainty(obs, act)
        to_np = lambda x: x.cpu().numpy()  # noqa: E731
        self.model_buffer.add_batch(to_np(obs), to_np(nxt), to_np(act), to_np(rew), to_np(term).astype(np.float32), penalties=to_np(pen))
        self._last_model_rollout = self.num_timesteps
        self.logger.record("model/rollout_length", k)
        self.logger.record("model/buffer_size", self.model_buffer.size())
        self.logger.record("model/uncertainty_mean", float(pen.mean()))
        self.logger.record("model/uncertainty_max", float(pen.max()))
        return int(obs.shape[0])

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """Fit the world model once, refresh model rollouts when due, then M-SoBiRL's step
        (outer step when due, SAC on the dataset/model mixture)."""
        if self._last_model_fit < 0:
            self.fit_dynamics()
        if self._last_model_rollout < 0 or self.num_timesteps - self._last_model_rollout >= self.model_rollout_freq:
            self.generate_model_rollouts()
        n_outer = self._n_outer
        super().train(gradient_steps, batch_size)
        interval = getattr(self, "_log_interval", None)
        if interval and self._n_outer > n_outer and self._n_outer % interval == 0:
            self.dump_logs()

    def _excluded_save_params(self):
        return super()._excluded_save_params() + ["_log_interval"]
