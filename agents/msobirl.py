"""M-SoBiRL: model-based soft bilevel RL agents (DESIGN.md sections 2 and 4; seed 003).

:class:`MSoBiRL` is :class:`agents.sobirl.SoBiRL` (same outer level: feedback, reward updates,
relabelling, STORM, logging, save/load) plus a learned dynamics model:

* **Dynamics.**  A :class:`birl.dynamics.GaussianEnsemble` over ``(s, a) -> (s' - s, term)`` is
  refit on the replay buffer every ``model_train_freq`` env steps (NLL, held-out early stopping,
  elites).
* **Inner level, MBPO-style.**  Every ``model_rollout_freq`` env steps, ``rollout_batch_size``
  replay states start short rollouts of the current policy inside the model
  (:class:`birl.model_env.ModelEnv`); their length follows a linear schedule
  ``rollout_schedule = (start_step, end_step, min_length, max_length)``.  Model transitions go
  to a model replay buffer, rewarded by the learned reward (and relabelled after each reward
  update), and each SAC batch mixes ``real_ratio`` real with model transitions.
* **Outer level, the ``model`` estimator.**  ``grad(Q* - V*)(s_h, a_h)`` at each visited pair is
  the ``branch`` estimator run inside the learned model (no state cloning): two rollouts from
  ``s_h`` of ``branch_horizon`` steps, one starting with ``a_h``, one with ``a ~ pi``, and

      grad(Q - V)(s_h, a_h) ~ grad_x [ sum_t gamma^t r_x(s^Q_t, a^Q_t) - sum_t gamma^t r_x(s^V_t, a^V_t) ]

  with the rollout states held fixed (seed 003, "Absorb P into an expectation" and
  "Construction of estimators").  It covers every reward parameter, not only the last layer.
  Truncating at ``branch_horizon`` drops the ``gamma^T`` tail ``gamma^T (V(s^Q_T) - V(s^V_T))``;
  ``branch_bootstrap`` (opt-in) puts it back for the reward's last layer with the successor
  critic, ``head . E_pi Psi(s_T, .)`` (:func:`birl.model_env.branched_advantage`).  Model error
  adds bias.

:class:`DiscreteMSoBiRL` is the tabular path: :class:`agents.sobirl.DiscreteSoBiRL` whose model is
a transition tensor, either known (``transition_model=P``) or learned from replay counts
(:class:`birl.dynamics.TabularCounts`), and whose hypergradient is the M-SoBiRL w-iteration
(seed 003, "Model-based bilevel RL algorithm: M-SoBiRL") of :func:`birl.hypergrad.hypergradient`
on that model, with the reward table as the outer variable and the chain rule to the reward
network (``w`` is warm-started across outer steps, as in the algorithm).

Hooks used in :mod:`agents.sobirl` (overridden, not edited): ``_init_bilevel`` (accept
``estimator="model"``), ``_myopic_directions`` / ``_one_step_advantage`` (where SoBiRL puts the
one-step surrogate, the continuous agent puts the model-branched ``Q - V``),
``_hyper_surrogate`` / ``_demo_surrogate`` (tabular agent), ``_relabel``, ``train``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from agents.buffers import BilevelReplayBuffer
from agents.sobirl import ESTIMATORS, DiscreteSoBiRL, SoBiRL
from birl.dynamics import EnsembleConfig, GaussianEnsemble, TabularCounts
from birl.feedback import bradley_terry_nll, segment_returns
from birl.hypergrad import hypergradient, leave_one_out
from birl.losses import PolicyLoss
from birl.model_env import EnsembleDynamics, ModelEnv, branched_advantage
from birl.tabular import TabularMDP

__all__ = ["MSoBiRL", "DiscreteMSoBiRL", "ModelReplayBuffer", "rollout_length"]


def rollout_length(step: int, schedule: Sequence[float]) -> int:
    """MBPO's linear schedule: ``min_len`` before ``start``, ``max_len`` after ``end``, linear between."""
    start, end, lo, hi = schedule
    if step <= start:
        return int(lo)
    frac = min(1.0, (step - start) / max(1.0, end - start))
    return int(round(lo + frac * (hi - lo)))


class ModelReplayBuffer(BilevelReplayBuffer):
    """Replay buffer of model transitions (``n_envs = 1``), filled a batch at a time."""

    def add_batch(self, obs: np.ndarray, next_obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
        n = obs.shape[0]
        if n > self.buffer_size:
            raise ValueError(f"batch of {n} transitions does not fit a buffer of size {self.buffer_size}")
        idx = (self.pos + np.arange(n)) % self.buffer_size
        self.observations[idx, 0] = obs.reshape((n,) + self.obs_shape)
        self.next_observations[idx, 0] = next_obs.reshape((n,) + self.obs_shape)
        self.actions[idx, 0] = actions.reshape((n, self.action_dim))
        self.rewards[idx, 0] = rewards
        self.dones[idx, 0] = dones
        self.true_rewards[idx, 0] = np.nan  # a model transition has no TRUE reward
        self.full = self.full or self.pos + n >= self.buffer_size
        self.pos = int((self.pos + n) % self.buffer_size)


class _MixedSampler:
    """Stands in for the replay buffer during SAC updates: ``sample`` mixes real and model data;
    every other attribute is the real buffer's."""

    def __init__(self, real: BilevelReplayBuffer, model: ModelReplayBuffer, real_ratio: float) -> None:
        self._real, self._model, self._ratio = real, model, real_ratio

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        n_real = int(round(batch_size * self._ratio))
        parts = [buf.sample(k, env=env) for buf, k in ((self._real, n_real), (self._model, batch_size - n_real)) if k > 0]
        if len(parts) == 1:
            return parts[0]
        return ReplayBufferSamples(*[None if x is None or y is None else th.cat([x, y]) for x, y in zip(*parts)])


class _ModelEstimatorMixin:
    """``estimator="model"`` (the default) on top of SoBiRL's estimators."""

    default_estimator = "model"
    estimators = ESTIMATORS + ("model",)


def _pop_model_kwargs(kwargs: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    return {k: kwargs.pop(k, v) for k, v in defaults.items()}


# --------------------------------------------------------------------------------------------
# Continuous control: ensemble + MBPO rollouts + model estimator
# --------------------------------------------------------------------------------------------

_MODEL_DEFAULTS = dict(
    dynamics_kwargs=None,
    model_fit_kwargs=None,
    model_train_freq=250,
    model_rollout_freq=250,
    rollout_batch_size=10_000,
    rollout_schedule=(0, 10_000, 1, 5),
    model_retain=4,
    real_ratio=0.5,
    branch_steps=5,
    branch_bootstrap=False,  # see the class docstring
    termination_fn="auto",
)


class MSoBiRL(_ModelEstimatorMixin, SoBiRL):
    """SoBiRL with a learned dynamics ensemble, MBPO-style inner training and the ``model``
    estimator (module docstring).  ``Box`` actions and flat ``Box`` observations.

    Args (besides :class:`agents.sobirl.SoBiRL`'s):
        estimator: ``"model"`` (default), or any SoBiRL estimator (the model still trains SAC).
        dynamics_kwargs: :class:`birl.dynamics.EnsembleConfig` overrides (``n_members``, ``hidden``...).
        model_fit_kwargs: :meth:`birl.dynamics.GaussianEnsemble.fit` overrides.
        model_train_freq: env steps between ensemble refits.
        model_rollout_freq: env steps between model-rollout generations.
        rollout_batch_size: start states per generation.
        rollout_schedule: ``(start_step, end_step, min_length, max_length)`` of the rollout length.
        termination_fn: how model rollouts end.  ``"auto"`` (default): the env's known rule
            (:func:`envs.termination.termination_rule`, e.g. Hopper's healthy ranges, as MBPO
            does) where there is one, else the ensemble's learned termination head; ``"learned"``:
            always the head; or a callable ``(obs, act, next_obs) -> [B] bool`` on tensors.  The
            head is ignored until the replay buffer holds a termination.
        model_retain: generations kept in the model buffer.
        real_ratio: fraction of real transitions in each SAC batch (1 disables model data).

    Defaults measured on Pendulum-v1 (6,000 env steps, 200 preferences, seed 0, TRUE return of 5
    deterministic episodes): with MBPO-sized generations (``rollout_batch_size=10_000``,
    ``real_ratio=0.5``) and the second term off, -282; with 400 start states per generation the
    model buffer is a few thousand correlated transitions and SAC, fed 90% model data, did not
    learn (-1563 after 8,000 steps).  With the ``model`` estimator at ``hypergrad_coef=1`` the
    second term (1/tau times the sum of 50 model-branched ``Q - V`` differences per pair)
    dominated the Bradley-Terry term: preference accuracy 0.68 and return -1384; at the default
    ``hypergrad_coef=0.1`` for this estimator: accuracy 0.92 and return -220.  On Hopper-v5
    (segments of 50 steps) even ``0.01`` let the second term outweigh the Bradley-Terry gradient
    4-20x (``outer/direct_grad_norm`` against ``outer/second_term_grad_norm``): after 70k steps the
    reward model fitted only 83% of its labels; the zoo config uses ``1e-4`` there.
        branch_horizon: length ``T`` of the estimator's branched rollouts.
        branch_bootstrap: add ``gamma^T`` times the successor critic's ``grad V`` at the rollouts'
            last states (trains a successor critic as SoBiRL's ``successor`` estimator does).
            Off (the default), the estimate is truncated at ``T``: on a garnet its bias is 33%
            at ``T = 1`` and 12% at ``T = 2`` in the same ``(s, a)``, and with the exact
            ``grad V*`` the bootstrap removes it (``tests/test_model_estimator.py``).  With a
            learned critic it did not help: the tail is a difference of two successor estimates
            at *different* states, whose errors do not cancel as in ``Psi(s, a) - E Psi(s, .)``.
            Pendulum, 8,000 steps, ``gradient_steps=10``, seed 0: -1565 with the bootstrap,
            -183 without.
        branch_rollouts: rollout pairs per visited ``(s_h, a_h)``.
        branch_steps: visited steps per segment that are branched (random, reweighted by
            ``H / branch_steps`` so that ``sum_h`` stays unbiased); ``None`` branches every step.
    """

    def __init__(self, policy, env, feedback=None, **kwargs: Any) -> None:
        model_kw = _pop_model_kwargs(kwargs, _MODEL_DEFAULTS)
        kwargs.setdefault("branch_horizon", 10)  # branch_horizon/branch_rollouts live on the bilevel mixin
        model_estimator = kwargs.get("estimator") in (None, "model")
        if model_estimator:
            kwargs.setdefault("hypergrad_coef", 0.1)  # see the class docstring
        if model_kw["branch_bootstrap"] and not model_estimator:
            raise ValueError(f"branch_bootstrap=True needs estimator='model', got estimator={kwargs.get('estimator')!r}")
        if kwargs.get("_init_setup_model", True):
            self._init_model_based(**model_kw)
        super().__init__(policy, env, feedback=feedback, **kwargs)

    def _init_model_based(self, dynamics_kwargs, model_fit_kwargs, model_train_freq, model_rollout_freq, rollout_batch_size,
                          rollout_schedule, model_retain, real_ratio, branch_steps, branch_bootstrap, termination_fn) -> None:
        for name, v in (("model_train_freq", model_train_freq), ("model_rollout_freq", model_rollout_freq),
                        ("rollout_batch_size", rollout_batch_size), ("model_retain", model_retain)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if branch_steps is not None and (int(branch_steps) != branch_steps or branch_steps < 1):
            raise ValueError(f"branch_steps must be a positive integer or None, got {branch_steps!r}")
        if len(rollout_schedule) != 4 or not 1 <= rollout_schedule[2] <= rollout_schedule[3]:
            raise ValueError(f"rollout_schedule must be (start_step, end_step, min_length >= 1, max_length >= min_length), got {rollout_schedule!r}")
        if not 0 < real_ratio <= 1:
            raise ValueError(f"real_ratio must lie in (0, 1], got {real_ratio!r}")
        if not (callable(termination_fn) or termination_fn in ("auto", "learned")):
            raise ValueError(f"termination_fn must be 'auto', 'learned' or a callable (obs, act, next_obs) -> bool tensor, got {termination_fn!r}")
        self.termination_fn = termination_fn
        self.dynamics_kwargs, self.model_fit_kwargs = dict(dynamics_kwargs or {}), dict(model_fit_kwargs or {})
        self.model_train_freq, self.model_rollout_freq = int(model_train_freq), int(model_rollout_freq)
        self.rollout_batch_size, self.rollout_schedule = int(rollout_batch_size), tuple(rollout_schedule)
        self.model_retain, self.real_ratio = int(model_retain), float(real_ratio)
        self.branch_steps = None if branch_steps is None else int(branch_steps)
        self.branch_bootstrap = bool(branch_bootstrap)
        self._last_model_fit, self._last_model_rollout = -1, -1
        self._seen_termination = True  # until the first fit says otherwise

    # ------------------------------------------------------------------ setup
    @property
    def needs_successor(self) -> bool:
        """The ``model`` estimator bootstraps its branched rollouts with the successor critic."""
        return super().needs_successor or (self.estimator == "model" and self.branch_bootstrap)

    def _setup_model(self) -> None:
        super()._setup_model()
        obs_space = self.observation_space
        if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"{type(self).__name__} needs a flat Box observation space, got {obs_space}")
        cfg = EnsembleConfig(obs_dim=obs_space.shape[0], act_dim=int(np.prod(self.action_space.shape)), **self.dynamics_kwargs)
        self.dynamics = GaussianEnsemble(cfg).to(self.device)
        size = self.rollout_batch_size * int(self.rollout_schedule[3]) * self.model_retain
        self.model_buffer = ModelReplayBuffer(size, obs_space, self.action_space, self.device, n_envs=1,
                                              handle_timeout_termination=False)
        self._model_rng = th.Generator().manual_seed(int(self.seed or 0))
        self._branch_cache = None

    def set_env(self, env, force_reset: bool = True) -> None:
        super().set_env(env, force_reset=force_reset)
        self._termination_rule = None  # termination_fn="auto" is looked up again for the new env

    def _excluded_save_params(self):
        return super()._excluded_save_params() + ["model_buffer", "_model_rng", "_branch_cache", "_termination_rule"]

    def _get_torch_save_params(self):
        state_dicts, variables = super()._get_torch_save_params()
        return state_dicts + ["dynamics"], variables

    # ------------------------------------------------------------------ pieces
    def _reward_fn(self, obs: th.Tensor, buffer_act: th.Tensor, next_obs: th.Tensor) -> th.Tensor:
        """Learned reward on buffer-unit actions (differentiable in the reward parameters)."""
        return self.reward_model(obs, self._env_actions_t(buffer_act), next_obs)

    def _inner_reward_fn(self, obs: th.Tensor, buffer_act: th.Tensor, next_obs: th.Tensor) -> th.Tensor:
        """What the inner learner is paid on buffer-unit actions: the learned reward, divided by
        ``rms`` with ``reward_scaling`` (as on the env and in the real replay buffer)."""
        return self.inner_reward(obs, self._env_actions_t(buffer_act), next_obs)

    def _policy_sample(self, obs: th.Tensor) -> th.Tensor:
        return self.actor.action_log_prob(obs)[0]

    def model_env(self, reward: bool = True) -> ModelEnv:
        """A :class:`birl.model_env.ModelEnv` on the learned ensemble that pays the inner learner's
        reward (the learned one, over ``rms`` with ``reward_scaling``; ``reward=False``: none).

        Until the replay buffer holds a termination the ensemble's termination head is ignored:
        fitted on all-negative labels it has no evidence, yet after a short fit it ended most
        Pendulum model rollouts early (``tests/test_model_estimator.py``)."""
        rule = self.termination_rule()
        dynamics = EnsembleDynamics(self.dynamics, terminations=self._seen_termination and rule is None)
        env = ModelEnv(dynamics, self._inner_reward_fn if reward else None, termination_fn=rule)
        env.generator = self._model_rng  # one seeded stream across rollouts
        return env

    def termination_rule(self) -> Optional[Callable]:
        """The known termination rule that model rollouts use (``termination_fn``), or ``None``
        for the ensemble's learned head; ``"auto"`` is resolved from the env's spec once."""
        if callable(self.termination_fn):
            return self.termination_fn
        if self.termination_fn == "learned":
            return None
        if getattr(self, "_termination_rule", None) is None:
            if self.env is None:  # loaded without an env: nothing to look up yet
                return None
            from envs.termination import termination_rule

            spec = self.env.get_attr("spec")[0]
            self._termination_rule = (termination_rule(spec) if spec is not None else None) or "learned"
        return None if self._termination_rule == "learned" else self._termination_rule

    def _real_transitions(self) -> Tuple[np.ndarray, ...]:
        buf = self.replay_buffer
        n = buf.size()
        flat = lambda a: a[:n].reshape((n * buf.n_envs,) + a.shape[2:])  # noqa: E731
        terminated = flat(buf.dones * (1 - buf.timeouts)) if buf.handle_timeout_termination else flat(buf.dones)
        return flat(buf.observations), flat(buf.actions), flat(buf._next_obs(np.arange(n))), terminated

    def fit_dynamics(self) -> Dict[str, Any]:
        """Refit the ensemble on the whole replay buffer; logs ``model/*``."""
        obs, act, nxt, term = self._real_transitions()
        kw = dict(max_epochs=50, seed=int(self._outer_rng.integers(2**31))) | self.model_fit_kwargs
        result = self.dynamics.fit(obs, act.reshape(len(act), -1), nxt, term, **kw)
        self._last_model_fit = self.num_timesteps
        self._seen_termination = bool(np.any(term))
        self.logger.record("model/train_loss", result.train_loss[-1])
        self.logger.record("model/val_mse_elites", float(np.mean(np.array(result.final_mse)[result.elites])))
        self.logger.record("model/epochs", result.epochs)
        self.logger.record("model/updates", result.updates)
        return {"train_loss": result.train_loss, "final_mse": result.final_mse, "elites": result.elites}

    @th.no_grad()
    def generate_model_rollouts(self) -> int:
        """Branch ``rollout_batch_size`` replay states into the model (MBPO); returns transitions added."""
        k = rollout_length(self.num_timesteps, self.rollout_schedule)
        start = self.replay_buffer.sample(self.rollout_batch_size, env=self._vec_normalize_env).observations
        ro = self.model_env().rollout(start, self._policy_sample, k)
        obs, act, nxt, rew, term = (x.cpu().numpy() for x in ro.flat())
        self.model_buffer.add_batch(obs, nxt, act, rew, term.astype(np.float32))
        self._last_model_rollout = self.num_timesteps
        self.logger.record("model/terminated_fraction", float(term.mean()) if term.size else 0.0)
        self.logger.record("model/rollout_length", k)
        self.logger.record("model/buffer_size", self.model_buffer.size())
        return int(obs.shape[0])

    # ------------------------------------------------------------------ inner level
    def _n_real(self) -> int:
        buf = self.replay_buffer
        return buf.size() * buf.n_envs

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        enough = self._n_real() >= max(batch_size, 10)  # after a load the replay buffer starts empty
        if enough and (self._last_model_fit < 0 or self.num_timesteps - self._last_model_fit >= self.model_train_freq):
            self.fit_dynamics()
        # an empty model buffer (at the start, or after a load or a resumed checkpoint: it is not
        # saved) is filled at once
        due = self.model_buffer.size() == 0 or self.num_timesteps - self._last_model_rollout >= self.model_rollout_freq
        if enough and self._last_model_fit >= 0 and due:
            self.generate_model_rollouts()
        self._branch_cache = None
        if self.real_ratio >= 1 or self.model_buffer.size() == 0:
            return super().train(gradient_steps, batch_size)
        real = self.replay_buffer
        self.replay_buffer = _MixedSampler(real, self.model_buffer, self.real_ratio)
        try:
            super().train(gradient_steps, batch_size)
        finally:
            self.replay_buffer = real

    def _relabel(self) -> None:
        super()._relabel()
        if self.model_buffer.size() > 0:
            self.model_buffer.relabel(self.inner_reward, self._env_actions, self.relabel_batch_size)  # rms refitted just above

    # ------------------------------------------------------------------ model estimator
    def _branch_rollouts(self, obs: th.Tensor, buffer_act: th.Tensor):
        """Q and V rollouts (``branch_rollouts`` each) from every ``(obs, act)`` in the model."""
        m = self.branch_rollouts
        starts, first = obs.repeat((m,) + (1,) * (obs.ndim - 1)), buffer_act.repeat((m,) + (1,) * (buffer_act.ndim - 1))
        env = self.model_env(reward=False)
        with th.no_grad():
            q = env.rollout(starts, self._policy_sample, self.branch_horizon, first_actions=first)
            v = env.rollout(starts, self._policy_sample, self.branch_horizon)
        return q, v

    def _model_advantage(self, q, v, n: int) -> th.Tensor:
        """:func:`birl.model_env.branched_advantage` of the Q and V rollouts, averaged over repeats ``[n]``.

        With ``branch_bootstrap`` the ``gamma^T`` tail is ``head . E_pi Psi(s_T, .)``: the successor
        critic's estimate of ``grad_head V*(s_T)``, so the reward's last layer gets an untruncated
        estimate and the feature network the ``T``-step one."""
        value_fn = None
        if self.branch_bootstrap:
            def value_fn(obs: th.Tensor) -> th.Tensor:
                with th.no_grad():
                    psi = self.successor.expected(obs, self._policy_sample, None, self.n_action_samples)
                return psi @ self.reward_model.head.weight.reshape(-1)
        d = branched_advantage(q, v, self._reward_fn, self.gamma, value_fn)
        return d.reshape(self.branch_rollouts, n).mean(0)

    def _myopic_directions(self, batches) -> th.Tensor:
        """``(1/tau) sum_i sum_h [model-branched (Q - V)(s_h, a_h)]`` ``[N]`` (``model`` estimator).

        The rollouts are drawn once per outer step and reused by every reward step (only the
        reward evaluation, which carries the gradient, is redone)."""
        if self.estimator != "model":
            return super()._myopic_directions(batches)
        key = tuple(id(b) for b in batches)
        if self._branch_cache is None or self._branch_cache[0] != key:
            parts = []
            for seg in batches:
                n, h = seg.acts.shape[:2]
                steps = np.arange(h) if self.branch_steps is None or self.branch_steps >= h else np.sort(
                    self._outer_rng.choice(h, self.branch_steps, replace=False))
                obs = th.as_tensor(seg.obs[:, steps].reshape((-1,) + seg.obs.shape[2:]), device=self.device).float()
                # segments carry env-unit actions; the model rollouts take buffer-format ones
                act = th.as_tensor(self._buffer_actions(seg.acts[:, steps].reshape((-1,) + seg.acts.shape[2:])),
                                   device=self.device).float()
                alive = self._alive(seg)[:, steps]  # absorbing steps: advantage 0
                parts.append((n, len(steps), h / len(steps), alive, *self._branch_rollouts(obs, act)))
            self._branch_cache = (key, parts)
        total = 0.0
        for n, k, weight, alive, q, v in self._branch_cache[1]:
            total = total + weight * (self._model_advantage(q, v, n * k).reshape(n, k) * alive).sum(1)
        return total / self._tau()

    def _one_step_advantage(self, obs, act, nxt, reward_fn=None) -> th.Tensor:
        """Demonstrations with the ``model`` estimator: model-branched ``(Q - V)(s, a)``."""
        if self.estimator != "model" or reward_fn is not None:
            return super()._one_step_advantage(obs, act, nxt, reward_fn)
        buffer_act = th.as_tensor(self._buffer_actions(act.cpu().numpy()), device=self.device)
        q, v = self._branch_rollouts(obs.float(), buffer_act)
        return self._model_advantage(q, v, obs.shape[0])


# --------------------------------------------------------------------------------------------
# Tabular path: known or counted P + M-SoBiRL w-iteration
# --------------------------------------------------------------------------------------------


class _ScoreWeights(PolicyLoss):
    """``f(x, pi) = sum_{s,a} C(s,a) log pi(a|s)``, so that ``diag(pi) grad_pi f = C`` (the quantity
    M-SoBiRL's ``b_k = U^T diag(pi_k) grad_pi f`` is built from) and ``grad_x f = 0``."""

    def __init__(self, C: np.ndarray) -> None:
        self.C = th.as_tensor(np.asarray(C, dtype=np.float64))

    def value(self, mdp, x, pi):
        return (self.C * th.log(pi.clamp_min(1e-300))).sum()


_TABULAR_DEFAULTS = dict(transition_model=None, count_prior=0.0, msobirl_iters=200, msobirl_xi=None)


class DiscreteMSoBiRL(_ModelEstimatorMixin, DiscreteSoBiRL):
    """Tabular M-SoBiRL agent: ``Discrete`` observations and actions (e.g. :class:`envs.tabular_env.TabularEnv`).

    Args (besides :class:`agents.sobirl.DiscreteSoBiRL`'s):
        transition_model: a known ``(S, A, S)`` transition tensor; ``None`` learns ``P_hat`` from
            the replay buffer's transition counts before every outer step.
        count_prior: Dirichlet pseudo-count of the learned model.
        msobirl_iters: w-iterations per outer step (warm-started from the previous ``w``).
        msobirl_xi: w-iteration step size (default ``1 / ||A||_2^2``).
    """

    def __init__(self, policy, env, feedback=None, **kwargs: Any) -> None:
        model_kw = _pop_model_kwargs(kwargs, _TABULAR_DEFAULTS)
        if kwargs.get("_init_setup_model", True):
            if int(model_kw["msobirl_iters"]) != model_kw["msobirl_iters"] or model_kw["msobirl_iters"] < 1:
                raise ValueError(f"msobirl_iters must be a positive integer, got {model_kw['msobirl_iters']!r}")
            P = model_kw["transition_model"]
            self.known_P = None if P is None else np.asarray(P, dtype=np.float64)
            self.count_prior, self.msobirl_iters, self.msobirl_xi = model_kw["count_prior"], int(model_kw["msobirl_iters"]), model_kw["msobirl_xi"]
            self._w = None
        super().__init__(policy, env, feedback=feedback, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        obs_space, act_space = self.observation_space, self.action_space
        if not isinstance(obs_space, spaces.Discrete):
            raise ValueError(f"{type(self).__name__} needs a Discrete observation space, got {obs_space}")
        S, A = int(obs_space.n), int(act_space.n)
        if self.known_P is not None and self.known_P.shape != (S, A, S):
            raise ValueError(f"transition_model must have shape ({S}, {A}, {S}), got {self.known_P.shape}")
        if self.reward_model.use_next_obs:
            raise ValueError("reward_model: the tabular path needs a reward of (s, a) only (use_next_obs=False)")
        self.counts = TabularCounts(S, A, prior=self.count_prior)
        self._surrogate_cache = None
        self._sa = (th.arange(S, device=self.device).repeat_interleave(A), th.arange(A, device=self.device).repeat(S))

    def _excluded_save_params(self):
        return super()._excluded_save_params() + ["_sa", "_surrogate_cache"]

    # ------------------------------------------------------------------ model
    def update_counts(self) -> TabularCounts:
        """Recount ``P_hat`` from every transition in the replay buffer."""
        buf = self.replay_buffer
        n = buf.size()
        self.counts = TabularCounts(self.counts.n_states, self.counts.n_actions, prior=self.count_prior).update(
            buf.observations[:n].reshape(-1), buf.actions[:n].reshape(-1), buf._next_obs(np.arange(n)).reshape(-1)
        )
        return self.counts

    def transition_estimate(self) -> np.ndarray:
        """The ``P`` the estimator uses: the known one, or the counts' estimate."""
        return self.known_P if self.known_P is not None else self.counts.P()

    def policy_table(self) -> np.ndarray:
        """``pi(a|s)`` of the current actor, ``(S, A)`` float64."""
        with th.no_grad():
            pi = self.actor.action_probs(th.arange(self.observation_space.n, device=self.device))[0]
        pi = pi.double().cpu().numpy()
        return pi / pi.sum(1, keepdims=True)

    def reward_table(self) -> th.Tensor:
        """``r_x(s, a)`` for every pair, ``(S, A)``, differentiable in the reward parameters."""
        s, a = self._sa
        return self.reward_model(s, a, s).reshape(int(self.observation_space.n), int(self.action_space.n))

    def model_hypergradient(self, C: np.ndarray) -> np.ndarray:
        """``(1/tau) sum_{s,a} C(s,a) grad_r (Q* - V*)(s,a)`` as an ``(S, A)`` table (gradient with
        respect to the reward table), by the M-SoBiRL w-iteration on the current model and policy."""
        S, A = self.counts.counts.shape[:2]
        with th.no_grad():
            r = self.reward_table().double().cpu().numpy()
        mdp = TabularMDP(self.transition_estimate(), np.eye(S * A).reshape(S, A, S * A), gamma=self.gamma, tau=self._tau())
        res = hypergradient(mdp, r.reshape(-1), _ScoreWeights(C), "msobirl", pi=self.policy_table(),
                            n_iters=self.msobirl_iters, xi=self.msobirl_xi, w0=self._w)
        self._w, self.msobirl_residual = res.info["w"], res.info["residual"]
        return res.grad.reshape(S, A)

    def _log_outer(self, losses, norms) -> None:
        super()._log_outer(losses, norms)
        if self._w is not None:
            self.logger.record("outer/msobirl_residual", self.msobirl_residual)

    def _outer_step(self) -> None:
        if self.known_P is None:
            self.update_counts()
        self._surrogate_cache = None
        super()._outer_step()

    def _hyper_surrogate(self, on_policy, score_dirs) -> th.Tensor:
        if self.estimator != "model":
            return super()._hyper_surrogate(on_policy, score_dirs)
        if on_policy is None or len(on_policy[2]) < 2 or self.num_timesteps < self.hypergrad_warmup:
            return th.zeros((), device=self.device)
        if self._surrogate_cache is None:  # C depends on l(x_k) at the outer step's start
            s1, s2, y = on_policy
            with th.no_grad():
                l = bradley_terry_nll(segment_returns(self.reward_model, s1), segment_returns(self.reward_model, s2), y,
                                      label_smoothing=self.label_smoothing, reduction="none")
            coef = (leave_one_out(l) / len(l)).cpu().numpy()
            C = np.zeros(self.counts.counts.shape[:2])
            for seg in (s1, s2):
                n, h = seg.acts.shape[:2]
                idx = (seg.obs.reshape(n, h).astype(np.int64), seg.acts.reshape(n, h).astype(np.int64))
                np.add.at(C, idx, np.broadcast_to(coef[:, None], (n, h)))
            self._surrogate_cache = th.as_tensor(self.model_hypergradient(C), device=self.device, dtype=th.float32)
        return self.hypergrad_coef * (self.reward_table() * self._surrogate_cache).sum()

    def demonstration_weights(self) -> np.ndarray:
        """Empirical ``(s, a)`` frequencies of the demonstrations (the ML-IRL loss weights)."""
        data = self._demo_data if self._demo_data is not None else self.demonstrations.transitions()
        W = np.zeros(self.counts.counts.shape[:2])
        np.add.at(W, (data["obs"].astype(np.int64).reshape(-1), data["acts"].astype(np.int64).reshape(-1)), 1.0)
        return W / W.sum()

    def _demo_surrogate(self, idx: np.ndarray) -> th.Tensor:
        """ML-IRL ``phi = -E_D[log pi*(a|s)]``: ``grad phi = -(1/tau) E_D[grad(Q - V)]``, by the
        w-iteration over the whole demonstration set (one solve per outer step; ``idx`` unused)."""
        if self.estimator != "model":
            return super()._demo_surrogate(idx)
        if self._surrogate_cache is None:
            self._surrogate_cache = th.as_tensor(self.model_hypergradient(-self.demonstration_weights()),
                                                 device=self.device, dtype=th.float32)
        return (self.reward_table() * self._surrogate_cache).sum()
