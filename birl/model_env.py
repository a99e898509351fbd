"""One rollout interface for the true dynamics, a tabular ``P`` and a learned ensemble.

Model-based estimators (M-SoBiRL's ``model`` estimator, DESIGN.md section 2) and MBPO-style
inner training both need the same thing: batched rollouts from a batch of start states, under a
policy, with rewards from a *pluggable* reward function (our learned ``r_x``, never the env's).
:class:`ModelEnv` provides it on top of any :class:`Dynamics`:

* :class:`EnsembleDynamics` - a learned :class:`birl.dynamics.GaussianEnsemble`;
* :class:`TabularDynamics` - a transition tensor ``P`` (true, or ``TabularCounts.P()``);
* :class:`FunctionDynamics` - any batched simulator ``step(obs, act) -> (next_obs, terminated)``
  (a known system, or a true env behind an adapter on the Gymnasium side).

:func:`discounted_reward_sum` then evaluates ``sum_t gamma^t r_x(s_t, a_t, s_{t+1})`` on a rollout
in one batched, differentiable call: with the rollout states held fixed its gradient in ``x`` is
the Monte Carlo estimate of ``grad V*`` / ``grad Q*`` (seed 003, "Absorb P into an expectation":
``grad V*_s(x) = E[sum_t gamma^t grad r_{s_t a_t}(x) | s_0 = s, pi*]``, envelope theorem).
:func:`branched_advantage` turns a ``Q`` and a ``V`` rollout from the same state into the
estimate of ``grad (Q* - V*)(s, a)``, truncated at the rollout length or bootstrapped with a
value function there.  numpy + torch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Tuple, runtime_checkable

import numpy as np
import torch

from birl.dynamics import GaussianEnsemble

__all__ = [
    "Dynamics",
    "EnsembleDynamics",
    "TabularDynamics",
    "FunctionDynamics",
    "ModelEnv",
    "Rollout",
    "discounted_reward_sum",
    "branched_advantage",
]

#: ``reward_fn(obs [B, ...], act [B, ...], next_obs [B, ...]) -> [B]``
RewardFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``policy(obs [B, ...]) -> act [B, ...]`` (a sample of ``pi(.|s)``)
PolicyFn = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class Dynamics(Protocol):
    """A batched transition sampler."""

    def step(self, obs: torch.Tensor, act: torch.Tensor, generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(next_obs [B, ...], terminated [B] bool)`` for a batch of ``(obs, act)``."""
        ...


class EnsembleDynamics:
    """A learned :class:`GaussianEnsemble` (random elite per row, Gaussian draw).

    ``terminations=False`` ignores the ensemble's termination head (for data that never held a
    termination: there the head has no evidence, and off the data it can still fire).
    """

    def __init__(self, model: GaussianEnsemble, deterministic: bool = False, terminations: bool = True) -> None:
        if not isinstance(model, GaussianEnsemble):
            raise TypeError(f"model must be a birl.dynamics.GaussianEnsemble, got {type(model).__name__}")
        self.model, self.deterministic, self.terminations = model, bool(deterministic), bool(terminations)

    def step(self, obs, act, generator=None):
        act = act.reshape(act.shape[0], -1).to(obs.dtype)
        nxt, term = self.model.sample(obs, act, generator, deterministic=self.deterministic)
        return nxt, term if self.terminations else torch.zeros_like(term)


class TabularDynamics:
    """``s' ~ P(.|s, a)`` for integer state and action tensors ``[B]``; never terminates."""

    def __init__(self, P) -> None:
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ValueError(f"P must have shape (S, A, S), got {P.shape}")
        if np.any(P < 0) or not np.allclose(P.sum(-1), 1.0, atol=1e-6):
            raise ValueError("P must hold probability distributions along its last axis")
        self.P = P
        self._cum = torch.as_tensor(np.cumsum(P, -1))
        self._cum[..., -1] = 1.0

    def step(self, obs, act, generator=None):
        s, a = obs.long().reshape(-1), act.long().reshape(-1)
        u = torch.rand(s.shape[0], 1, generator=generator, dtype=torch.float64)
        nxt = (u > self._cum[s, a]).sum(-1).clamp_max(self.P.shape[0] - 1)
        return nxt.to(obs.device, obs.dtype), torch.zeros(s.shape[0], dtype=torch.bool, device=obs.device)


class FunctionDynamics:
    """Wrap a batched simulator ``step_fn(obs, act) -> (next_obs, terminated)``.

    ``terminated`` may be omitted by returning only ``next_obs`` (then nothing terminates).
    """

    def __init__(self, step_fn: Callable) -> None:
        if not callable(step_fn):
            raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
        self.step_fn = step_fn

    def step(self, obs, act, generator=None):
        out = self.step_fn(obs, act)
        if isinstance(out, tuple):
            nxt, term = out
        else:
            nxt, term = out, torch.zeros(obs.shape[0], dtype=torch.bool, device=obs.device)
        return torch.as_tensor(nxt, device=obs.device, dtype=obs.dtype), torch.as_tensor(term, device=obs.device).bool().reshape(-1)


@dataclass
class Rollout:
    """A batch of ``B`` rollouts of ``T`` steps (time first).

    Attributes:
        obs, act, next_obs: ``[T, B, ...]``.
        rewards: ``[T, B]`` from the reward function at rollout time (no gradient).
        terminated: ``[T, B]`` bool, the step on which a rollout terminated.
        alive: ``[T, B]`` float, 1 while the rollout had not terminated *before* step ``t``
            (so a terminating step still counts, the steps after it do not).
    """

    obs: torch.Tensor
    act: torch.Tensor
    next_obs: torch.Tensor
    rewards: torch.Tensor
    terminated: torch.Tensor
    alive: torch.Tensor

    @property
    def horizon(self) -> int:
        return int(self.obs.shape[0])

    def flat(self) -> Tuple[torch.Tensor, ...]:
        """Alive transitions as flat ``(obs, act, next_obs, rewards, terminated)`` (for a buffer)."""
        m = self.alive.reshape(-1) > 0
        f = lambda x: x.reshape((-1,) + tuple(x.shape[2:]))[m]  # noqa: E731
        return f(self.obs), f(self.act), f(self.next_obs), f(self.rewards), f(self.terminated)


class ModelEnv:
    """Batched rollouts in ``dynamics`` with rewards from ``reward_fn`` (module docstring).

    Args:
        dynamics: a :class:`Dynamics`.
        reward_fn: ``(obs, act, next_obs) -> [B]``; ``None`` gives zero rewards.
        termination_fn: optional known termination rule ``(obs, act, next_obs) -> [B] bool``,
            OR-ed with the dynamics' own prediction.
        seed: seed of the torch generator used for sampling.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        reward_fn: Optional[RewardFn] = None,
        termination_fn: Optional[Callable] = None,
        seed: Optional[int] = None,
    ) -> None:
        if not isinstance(dynamics, Dynamics):
            raise TypeError(f"dynamics must have a step(obs, act, generator) method, got {type(dynamics).__name__}")
        if reward_fn is not None and not callable(reward_fn):
            raise TypeError(f"reward_fn must be callable, got {type(reward_fn).__name__}")
        self.dynamics, self.reward_fn, self.termination_fn = dynamics, reward_fn, termination_fn
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._obs: Optional[torch.Tensor] = None

    def reset(self, obs: torch.Tensor) -> torch.Tensor:
        """Start a batch of rollouts at ``obs [B, ...]``."""
        if not isinstance(obs, torch.Tensor) or obs.ndim == 0:
            raise TypeError("obs must be a torch.Tensor with a batch dimension")
        self._obs = obs
        return obs

    @torch.no_grad()
    def step(self, act: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(next_obs, reward, terminated)`` for the current batch; the batch moves on."""
        if self._obs is None:
            raise RuntimeError("ModelEnv.step() called before reset()")
        obs = self._obs
        if act.shape[0] != obs.shape[0]:
            raise ValueError(f"act must have batch size {obs.shape[0]}, got {tuple(act.shape)}")
        nxt, term = self.dynamics.step(obs, act, self.generator)
        if self.termination_fn is not None:
            term = term | torch.as_tensor(self.termination_fn(obs, act, nxt), device=term.device).bool().reshape(-1)
        rew = self.reward_fn(obs, act, nxt).reshape(-1) if self.reward_fn is not None else torch.zeros(obs.shape[0])
        self._obs = nxt
        return nxt, rew.to(torch.float32), term

    @torch.no_grad()
    def rollout(
        self, start_obs: torch.Tensor, policy: PolicyFn, horizon: int, first_actions: Optional[torch.Tensor] = None
    ) -> Rollout:
        """Roll ``policy`` out for ``horizon`` steps from every row of ``start_obs``.

        ``first_actions`` (optional) replaces the policy's action at ``t = 0`` (a ``Q`` rollout;
        without it, a ``V`` rollout).  Terminated rows keep being stepped (cheap, batched) but
        are masked out by ``alive``.
        """
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        obs = self.reset(start_obs)
        B = obs.shape[0]
        alive = torch.ones(B, device=obs.device)
        out = {k: [] for k in ("obs", "act", "next_obs", "rewards", "terminated", "alive")}
        for t in range(int(horizon)):
            act = first_actions if (t == 0 and first_actions is not None) else policy(obs)
            nxt, rew, term = self.step(act)
            for k, v in zip(out, (obs, act, nxt, rew, term, alive.clone())):
                out[k].append(v)
            alive = alive * (~term).to(alive.dtype)
            obs = nxt
        return Rollout(**{k: torch.stack(v) for k, v in out.items()})


def discounted_reward_sum(rollout: Rollout, reward_fn: RewardFn, gamma: float) -> torch.Tensor:
    """``sum_t gamma^t alive_t r(s_t, a_t, s_{t+1})`` per rollout ``[B]``, differentiable through
    ``reward_fn`` only (one batched call over all ``T * B`` transitions)."""
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
    T, B = rollout.alive.shape
    flat = lambda x: x.reshape((T * B,) + tuple(x.shape[2:]))  # noqa: E731
    r = reward_fn(flat(rollout.obs), flat(rollout.act), flat(rollout.next_obs)).reshape(T, B)
    disc = gamma ** torch.arange(T, dtype=r.dtype, device=r.device)
    return (disc[:, None] * rollout.alive.to(r.dtype) * r).sum(0)


def branched_advantage(
    q: Rollout,
    v: Rollout,
    reward_fn: RewardFn,
    gamma: float,
    value_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """``(Q - V)(s, a)`` per row ``[B]`` from a ``Q`` rollout (first action ``a``) and a ``V``
    rollout (first action ``~ pi``) of the same length ``T`` from the same states ``s``:

        sum_{t<T} gamma^t r_x(Q_t) - sum_{t<T} gamma^t r_x(V_t)
            [+ gamma^T (live^Q_T value_fn(s^Q_T) - live^V_T value_fn(s^V_T))]

    Its gradient in the reward parameters, rollout states held fixed, estimates
    ``grad_x (Q* - V*)(s, a) = grad_x Q*(s, a) - E_{a' ~ pi*} grad_x Q*(s, a')`` (seed 003,
    "Construction of estimators": both terms are expectations of ``sum_t gamma^t grad r`` over
    trajectories of ``pi*``).  Without ``value_fn`` the estimate drops the ``gamma^T`` tail, a
    bias that shrinks only as fast as the two rollouts' state distributions merge (see
    ``tests/test_model_estimator.py``); ``value_fn(s) [B]`` differentiable with gradient
    ``~ grad_x V*(s)`` restores it (an ``n``-step target, as in TD(n)).  ``live_T`` is 0 for
    a rollout that terminated.
    """
    d = discounted_reward_sum(q, reward_fn, gamma) - discounted_reward_sum(v, reward_fn, gamma)
    if value_fn is None:
        return d
    if q.horizon != v.horizon:
        raise ValueError(f"the Q and V rollouts must have the same length to bootstrap, got {q.horizon} and {v.horizon}")
    live = lambda ro: ro.alive[-1] * (~ro.terminated[-1]).to(ro.alive.dtype)  # noqa: E731
    tail = live(q) * value_fn(q.next_obs[-1]).reshape(-1) - live(v) * value_fn(v.next_obs[-1]).reshape(-1)
    return d + gamma ** q.horizon * tail
