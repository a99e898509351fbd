"""Tabular soft MDPs with a parameterised reward (DESIGN.md section 1, seed 003).

A :class:`TabularMDP` holds the model ``M_tau(x) = (S, A, P, r_x, gamma, tau)`` of seed 003
("Bilevel RL formulation") together with an initial distribution ``rho``.  The reward is a
differentiable function of the outer variable ``x``: linear features ``r_x = features @ x`` or
any torch module whose flattened parameters are ``x`` (see :mod:`birl.rewards`).

Everything the inner level needs lives here:

* the soft Bellman operator ``T(Q)(s,a) = r(s,a) + gamma * E_{s'} tau*logsumexp(Q(s',.)/tau)``
  (seed 003, "Amortization and approximation"),
* :meth:`TabularMDP.soft_solve`, the soft-optimal ``(Q*, V*, pi*)`` by soft value iteration or
  soft policy iteration (same fixed point, the latter converges in a handful of linear solves),
* soft policy evaluation, discounted occupancy measures and vectorised trajectory sampling,
* random "garnet" MDPs and a gridworld builder.

Arrays are numpy ``float64``; the reward goes through torch so that outer losses can be
differentiated with autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch

from birl.rewards import LinearReward, ModuleReward, RewardFunction, as_numpy

__all__ = ["TabularMDP", "SoftSolution", "garnet", "gridworld", "logsumexp_tau"]

ArrayLike = Union[np.ndarray, torch.Tensor, list, tuple]


def logsumexp_tau(Q: np.ndarray, tau: float, axis: int = -1) -> np.ndarray:
    """``tau * log sum_a exp(Q / tau)``, computed stably (the soft maximum, seed 003)."""
    m = Q.max(axis=axis, keepdims=True)
    out = m + tau * np.log(np.exp((Q - m) / tau).sum(axis=axis, keepdims=True))
    return np.squeeze(out, axis=axis)


@dataclass
class SoftSolution:
    """Soft-optimal solution of the inner problem: ``Q*``, ``V*`` and ``pi*`` (all numpy)."""

    Q: np.ndarray
    V: np.ndarray
    pi: np.ndarray
    n_iter: int
    residual: float

    def __iter__(self):  # allows ``Q, V, pi = mdp.soft_solve(x)``
        return iter((self.Q, self.V, self.pi))


def _check_distribution(name: str, p: np.ndarray, axis: int = -1, atol: float = 1e-8) -> None:
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf")
    if np.any(p < -atol):
        raise ValueError(f"{name} has negative entries (min {p.min():.3g}); expected probabilities")
    sums = p.sum(axis=axis)
    if not np.allclose(sums, 1.0, atol=1e-6):
        worst = np.abs(sums - 1.0).max()
        raise ValueError(f"{name} must sum to 1 along its last axis (largest deviation {worst:.3g})")


class TabularMDP:
    """A finite soft MDP ``(S, A, P, r_x, gamma, tau, rho)`` with a parameterised reward.

    Args:
        P: transition tensor of shape ``(S, A, S)``; ``P[s, a]`` is a distribution over ``s'``.
        features: either reward features of shape ``(S, A, d)`` (linear reward
            ``r_x = features @ x``), a :class:`birl.rewards.RewardFunction`, or a
            ``torch.nn.Module`` whose flattened parameters are ``x`` (its input is the one-hot
            ``(s, a)`` pair unless ``reward_inputs`` is given).
        gamma: discount factor in ``[0, 1)``.
        tau: entropy temperature, ``> 0``.
        rho: initial state distribution of shape ``(S,)``; uniform if omitted.
        reward_inputs: optional ``(S, A, k)`` inputs for a module reward.

    Raises:
        ValueError: naming the argument, for wrong shapes, non-stochastic ``P`` or ``rho``,
            ``gamma`` outside ``[0, 1)`` or ``tau <= 0``.
    """

    def __init__(
        self,
        P: ArrayLike,
        features: Union[ArrayLike, RewardFunction, torch.nn.Module],
        gamma: float,
        tau: float,
        rho: Optional[ArrayLike] = None,
        reward_inputs: Optional[ArrayLike] = None,
    ) -> None:
        P = as_numpy(P, "P")
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ValueError(f"P must have shape (S, A, S), got {P.shape}")
        _check_distribution("P", P)
        self.P = P
        self.n_states, self.n_actions = P.shape[0], P.shape[1]
        S, A = self.n_states, self.n_actions

        if not np.isscalar(gamma) or not np.isfinite(gamma) or not (0.0 <= float(gamma) < 1.0):
            raise ValueError(f"gamma must be a number in [0, 1), got {gamma!r}")
        if not np.isscalar(tau) or not np.isfinite(tau) or float(tau) <= 0.0:
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        self.gamma, self.tau = float(gamma), float(tau)

        if rho is None:
            rho = np.full(S, 1.0 / S)
        rho = as_numpy(rho, "rho")
        if rho.shape != (S,):
            raise ValueError(f"rho must have shape ({S},) to match P, got {rho.shape}")
        _check_distribution("rho", rho)
        self.rho = rho

        if isinstance(features, RewardFunction):
            self.reward_fn = features
        elif isinstance(features, torch.nn.Module):
            self.reward_fn = ModuleReward(features, S, A, inputs=reward_inputs)
        else:
            self.reward_fn = LinearReward(features)
        if self.reward_fn.shape != (S, A):
            raise ValueError(
                f"features must describe a reward of shape ({S}, {A}) to match P, "
                f"got {self.reward_fn.shape}"
            )
        # support of P, used to enumerate segments and to sample quickly
        self._P_cum = np.cumsum(P, axis=-1)
        self._P_cum[..., -1] = 1.0

    # ------------------------------------------------------------------ reward
    @property
    def n_params(self) -> int:
        """Dimension of the outer variable ``x``."""
        return self.reward_fn.n_params

    @property
    def features(self) -> Optional[np.ndarray]:
        """Linear reward features ``(S, A, d)`` or ``None`` for a non-linear reward."""
        return getattr(self.reward_fn, "features", None)

    def check_x(self, x: ArrayLike, name: str = "x") -> np.ndarray:
        """Validate an outer variable: a finite vector of length :attr:`n_params`."""
        x = as_numpy(x, name).reshape(-1)
        if x.shape != (self.n_params,):
            raise ValueError(f"{name} must have shape ({self.n_params},), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or inf")
        return x

    def reward(self, x: ArrayLike) -> np.ndarray:
        """The reward table ``r_x`` of shape ``(S, A)``."""
        return self.reward_fn.numpy(self.check_x(x))

    def reward_vjp(self, x: ArrayLike, weights: np.ndarray) -> np.ndarray:
        """``sum_{s,a} weights[s,a] * grad_x r_x(s,a)``: the only way estimators touch ``grad r``."""
        return self.reward_fn.vjp(self.check_x(x), np.asarray(weights, dtype=np.float64))

    # ------------------------------------------------------------ soft Bellman
    def soft_bellman(self, Q: np.ndarray, r: np.ndarray) -> np.ndarray:
        """One application of the soft Bellman operator ``T_{M_tau(x)}`` (seed 003)."""
        return r + self.gamma * self.P @ logsumexp_tau(Q, self.tau)

    def softmax_policy(self, Q: np.ndarray) -> np.ndarray:
        """``pi(a|s) = exp((Q(s,a) - V(s)) / tau)`` with ``V = tau*logsumexp(Q/tau)``."""
        V = logsumexp_tau(Q, self.tau)
        return np.exp((Q - V[:, None]) / self.tau)

    def P_pi(self, pi: np.ndarray) -> np.ndarray:
        """State transition matrix under ``pi``: ``P_pi[s, s'] = sum_a pi(a|s) P(s'|s,a)``."""
        return np.einsum("sa,sat->st", pi, self.P)

    def policy_evaluation(self, pi: np.ndarray, x: ArrayLike = None, r: np.ndarray = None):
        """Soft evaluation of ``pi``: ``(Q^pi, V^pi)`` with entropy bonus ``tau * H(pi(.|s))``.

        ``V^pi = (I - gamma P_pi)^{-1} sum_a pi (r - tau log pi)`` and
        ``Q^pi = r + gamma P V^pi`` (seed 003, "Soft value function and Q-value function").
        """
        if r is None:
            r = self.reward(x)
        pi = np.asarray(pi, dtype=np.float64)
        logpi = np.log(np.clip(pi, 1e-300, None))
        b = (pi * (r - self.tau * logpi)).sum(axis=1)
        V = np.linalg.solve(np.eye(self.n_states) - self.gamma * self.P_pi(pi), b)
        return r + self.gamma * self.P @ V, V

    def soft_solve(
        self,
        x: ArrayLike,
        tol: float = 1e-10,
        max_iter: int = 100_000,
        method: str = "policy_iteration",
        Q0: Optional[np.ndarray] = None,
    ) -> SoftSolution:
        """Solve the inner problem ``pi*(x) = argmax_pi V^pi_{M_tau(x)}(rho)``.

        Args:
            x: outer variable.
            tol: stop when ``max |T(Q) - Q| <= tol``.
            max_iter: iteration cap; a ``RuntimeError`` is raised when it is hit.
            method: ``"value_iteration"`` (repeated soft Bellman steps) or
                ``"policy_iteration"`` (soft policy iteration: exact soft evaluation of
                ``softmax(Q/tau)`` then improvement; same fixed point, a few linear solves).
            Q0: warm start.

        Returns:
            :class:`SoftSolution` (unpacks as ``Q, V, pi``).
        """
        if tol <= 0:
            raise ValueError(f"tol must be positive, got {tol!r}")
        r = self.reward(x)
        Q = np.zeros_like(r) if Q0 is None else np.array(Q0, dtype=np.float64)
        if Q.shape != r.shape:
            raise ValueError(f"Q0 must have shape {r.shape}, got {Q.shape}")
        if method not in ("value_iteration", "policy_iteration"):
            raise ValueError(f"method must be 'value_iteration' or 'policy_iteration', got {method!r}")
        prev = np.inf
        for it in range(1, max_iter + 1):
            if method == "value_iteration":
                Q_new = self.soft_bellman(Q, r)
                residual = float(np.abs(Q_new - Q).max())
                Q = Q_new
            else:
                Q, _ = self.policy_evaluation(self.softmax_policy(Q), r=r)
                residual = float(np.abs(self.soft_bellman(Q, r) - Q).max())
            if residual <= tol:
                break
            # Policy iteration converges quadratically to the floating-point floor of the linear
            # solve (about 1e-13 * |Q|); stop there instead of spinning.
            floor = 1e-12 * max(1.0, float(np.abs(Q).max())) / (1.0 - self.gamma)
            if method == "policy_iteration" and residual >= prev and residual <= floor:
                break
            prev = residual
        else:
            raise RuntimeError(f"soft_solve did not reach tol={tol} in max_iter={max_iter} iterations")
        residual = float(np.abs(self.soft_bellman(Q, r) - Q).max())
        V = logsumexp_tau(Q, self.tau)
        return SoftSolution(Q=Q, V=V, pi=np.exp((Q - V[:, None]) / self.tau), n_iter=it, residual=residual)

    # ------------------------------------------------------------- occupancy
    def state_occupancy(self, pi: np.ndarray, start: Optional[np.ndarray] = None) -> np.ndarray:
        """Normalised discounted state occupancy ``(1-gamma) sum_t gamma^t P(s_t = s)``."""
        start = self.rho if start is None else np.asarray(start, dtype=np.float64)
        A = np.eye(self.n_states) - self.gamma * self.P_pi(pi)
        return (1.0 - self.gamma) * np.linalg.solve(A.T, start)

    def occupancy(self, pi: np.ndarray, start: Optional[np.ndarray] = None) -> np.ndarray:
        """Normalised discounted state-action occupancy ``d(s, a) = d(s) pi(a|s)`` (sums to 1)."""
        return self.state_occupancy(pi, start)[:, None] * pi

    # -------------------------------------------------------------- sampling
    def step_states(self, s: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sample ``s' ~ P(.|s, a)`` for arrays of states and actions."""
        u = rng.random(s.shape)[..., None]
        return np.minimum((u > self._P_cum[s, a]).sum(-1), self.n_states - 1)

    @staticmethod
    def sample_actions(pi: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sample ``a ~ pi(.|s)`` for an array of states."""
        cum = np.cumsum(pi[s], axis=-1)
        u = rng.random(s.shape)[..., None]
        return np.minimum((u > cum).sum(-1), pi.shape[1] - 1)

    def sample_states(self, dist: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """Sample ``n`` states from a distribution over states."""
        return rng.choice(self.n_states, size=n, p=dist)

    def sample_trajectories(
        self,
        pi: np.ndarray,
        n: int,
        horizon: int,
        rng: np.random.Generator,
        start: Optional[np.ndarray] = None,
    ):
        """Sample ``n`` trajectories of length ``horizon`` from ``start`` (default ``rho``).

        Returns ``(states, actions)``, each an int array of shape ``(n, horizon)``.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon!r}")
        start = self.rho if start is None else start
        states = np.empty((n, horizon), dtype=np.int64)
        actions = np.empty((n, horizon), dtype=np.int64)
        s = self.sample_states(start, n, rng)
        for h in range(horizon):
            a = self.sample_actions(pi, s, rng)
            states[:, h], actions[:, h] = s, a
            if h + 1 < horizon:
                s = self.step_states(s, a, rng)
        return states, actions

    def __repr__(self) -> str:
        return (
            f"TabularMDP(S={self.n_states}, A={self.n_actions}, n_params={self.n_params}, "
            f"gamma={self.gamma}, tau={self.tau})"
        )


# ------------------------------------------------------------------ builders
def garnet(
    n_states: int,
    n_actions: int,
    n_features: int,
    gamma: float = 0.9,
    tau: float = 1.0,
    seed: Optional[int] = None,
    branching: Optional[int] = None,
) -> TabularMDP:
    """A random "garnet" MDP: each ``(s, a)`` reaches ``branching`` random next states.

    Transition probabilities are uniform random partitions of 1 over the reached states,
    features are standard normal of shape ``(S, A, d)`` and ``rho`` is uniform.
    """
    for name, v in (("n_states", n_states), ("n_actions", n_actions), ("n_features", n_features)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    b = min(n_states, branching if branching is not None else max(1, min(5, n_states)))
    if b < 1:
        raise ValueError(f"branching must be >= 1, got {branching!r}")
    P = np.zeros((n_states, n_actions, n_states))
    for s in range(n_states):
        for a in range(n_actions):
            nxt = rng.choice(n_states, size=b, replace=False)
            P[s, a, nxt] = rng.dirichlet(np.ones(b))
    features = rng.standard_normal((n_states, n_actions, n_features))
    return TabularMDP(P, features, gamma=gamma, tau=tau)


GRID_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])  # up, down, left, right


def gridworld(
    size: int = 5,
    gamma: float = 0.9,
    tau: float = 1.0,
    slip: float = 0.1,
    start: Optional[tuple] = (0, 0),
) -> TabularMDP:
    """A ``size x size`` gridworld with four moves that slip to a random move with prob ``slip``.

    Features are one-hot cells (``d = size * size``): ``r_x(s, a) = x[s]``, a state reward.
    ``rho`` puts all mass on ``start`` (uniform when ``start`` is None).
    """
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip!r}")
    S, A = size * size, 4
    P = np.zeros((S, A, S))
    for s in range(S):
        r, c = divmod(s, size)
        for k, (dr, dc) in enumerate(GRID_MOVES):
            nr, nc = min(max(r + dr, 0), size - 1), min(max(c + dc, 0), size - 1)
            for a in range(A):
                p = (1.0 - slip) * (a == k) + slip / A
                P[s, a, nr * size + nc] += p
    features = np.repeat(np.eye(S)[:, None, :], A, axis=1)
    rho = None
    if start is not None:
        rho = np.zeros(S)
        rho[start[0] * size + start[1]] = 1.0
    return TabularMDP(P, features, gamma=gamma, tau=tau, rho=rho)
