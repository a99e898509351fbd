"""Tabular outer loops for soft bilevel RL and the baselines they are compared with.

Every solver minimises the hyper-objective ``phi(x) = f(x, pi*(x))`` of seed 003 ("Bilevel RL
formulation") with the same warm-started inner level: a table ``Q`` kept across outer steps, to
which ``inner_steps`` (``N``) soft Bellman steps ``Q <- T_{M_tau(x)}(Q)`` are applied after each
change of ``x``, and ``pi = softmax(Q / tau)`` (seed 003, "Amortization and approximation").
Solvers differ only in the direction of the ``x`` step:

============== =======================================================================
``SoBiRL``     hypergradient descent ``x <- x - beta * grad phi(x_k, pi_k)`` (seed 003,
               "Model-free Soft BiRL algorithm: SoBiRL"), estimator ``exact`` or ``branch``.
``MSoBiRL``    one warm-started least-squares step on ``w`` then the model-based
               hypergradient (seed 003, "Model-based bilevel RL algorithm: M-SoBiRL").
``StocSoBiRL`` ``branch`` estimator with STORM momentum (seed 003, "Stochastic extension").
``HPGD``       plain SGD with a small ``branch`` batch and ``beta / sqrt(k)`` steps.
``DRLHF``      alternating minimisation: ``grad_x f(x, pi_k)`` with ``pi`` held fixed.
``PBRL``       value-penalty reformulation with a softmax-logit policy.
============== =======================================================================

``run`` returns one record per outer step (plus the starting point); the exact ``phi`` it
reports comes from :meth:`birl.tabular.TabularMDP.soft_solve` and is excluded from ``wall_time``.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from birl.hypergrad import HypergradResult, hypergradient
from birl.losses import OuterLoss
from birl.tabular import TabularMDP

__all__ = [
    "BilevelSolver",
    "SoBiRL",
    "MSoBiRL",
    "StocSoBiRL",
    "HPGD",
    "DRLHF",
    "PBRL",
    "GradientDescent",
    "Storm",
    "storm_schedule",
    "policy_distance",
    "least_squares_w",
]

#: A point of the outer loop: the outer variable and the policy it is paired with.
Point = Tuple[np.ndarray, np.ndarray]
#: A gradient oracle ``g(D; x, pi)``: the integer seed fixes the random sample ``D``.
Oracle = Callable[[Point, int], np.ndarray]
Schedule = Union[float, Callable[[int], float]]

_SEED_RANGE = 2**31 - 1


# ------------------------------------------------------------------ validation
def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not np.isscalar(value) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _at_least(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def policy_distance(pi: np.ndarray, expert_pi: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """``sum_s w(s) TV(pi(.|s), expert(.|s))`` with ``TV = 0.5 * sum_a |pi - expert|``.

    ``weights`` default to uniform ``1/S``: the average total-variation distance over states.
    (Weighting by ``rho`` would ignore every state but the start in a gridworld.)
    """
    pi, expert_pi = np.asarray(pi, dtype=np.float64), np.asarray(expert_pi, dtype=np.float64)
    if expert_pi.shape != pi.shape:
        raise ValueError(f"expert_pi must have shape {pi.shape}, got {expert_pi.shape}")
    w = np.full(pi.shape[0], 1.0 / pi.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(w @ (0.5 * np.abs(pi - expert_pi).sum(axis=1)))


def _loss_grads(mdp: TabularMDP, loss: OuterLoss, x: np.ndarray, pi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(grad_x f(x, pi), grad_pi f(x, pi))`` by autograd; for trajectory losses the first is
    ``E_{d ~ pi}[grad_x l]``.  A part ``f`` does not depend on is zero."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    pit = torch.tensor(pi, dtype=torch.float64, requires_grad=True)
    f = loss.value(mdp, xt, pit)
    gx, gpi = torch.autograd.grad(f, (xt, pit), allow_unused=True) if f.requires_grad else (None, None)
    return (np.zeros_like(x) if gx is None else gx.numpy()), (np.zeros_like(pi) if gpi is None else gpi.numpy())


def least_squares_w(mdp: TabularMDP, loss: OuterLoss, x: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``w = A^{-1} b`` with ``A = (I - gamma P_pi)^T`` and ``b = U^T diag(pi) grad_pi f``: the
    minimiser of ``0.5 ||A w - b||^2`` (seed 003, "Least squared perspective"), one linear solve."""
    C = pi * _loss_grads(mdp, loss, x, pi)[1]
    b = C.sum(1) - mdp.gamma * np.einsum("sa,sat->t", C, mdp.P)
    return np.linalg.solve((np.eye(mdp.n_states) - mdp.gamma * mdp.P_pi(pi)).T, b)


# ------------------------------------------------------------------ optimisers
class GradientDescent:
    """Direction ``h_k = g(D_k; x_k, pi_k)``: one oracle call per step (plain (S)GD)."""

    def reset(self) -> None:
        """Forget any state (called by the solver that adopts the optimiser)."""

    def direction(self, point: Point, oracle: Oracle, seed: int) -> np.ndarray:
        return oracle(point, seed)


def storm_schedule(c: float = 1.0) -> Callable[[int], float]:
    """``mu_k = min(1, c / k^(2/3))``: the decaying STORM weight behind the ``O~(eps^-1.5)`` rate."""
    c = _positive("c", c)
    return lambda k: min(1.0, c / k ** (2.0 / 3.0))


class Storm(GradientDescent):
    """STORM momentum (seed 003, "Stochastic extension"):

        h_k = g(D_k; x_k, pi_k) + (1 - mu_k) (h_{k-1} - g(D_k; x_{k-1}, pi_{k-1}))

    Both oracle calls of step ``k`` receive the same integer seed, so the sample ``D_k`` is the
    same realisation at the new and the old point (common random numbers).  ``h_1 = g(D_1; x_1)``.
    With a noise-free oracle ``h_k = grad phi(x_k)`` for every ``k``: plain gradient descent.

    Args:
        mu: constant weight in ``(0, 1]`` or a schedule ``k -> mu_k`` (see :func:`storm_schedule`).
    """

    def __init__(self, mu: Schedule = 0.1) -> None:
        if not callable(mu) and not (_positive("mu", mu) <= 1.0):
            raise ValueError(f"mu must be in (0, 1], got {mu!r}")
        self.mu = mu
        self.reset()

    def reset(self) -> None:
        self.k = 0
        self.h: Optional[np.ndarray] = None
        self.previous: Optional[Point] = None

    def weight(self, k: int) -> float:
        """``mu_k``."""
        mu = float(self.mu(k)) if callable(self.mu) else float(self.mu)
        if not 0.0 < mu <= 1.0:
            raise ValueError(f"mu must be in (0, 1], the schedule gave mu_{k} = {mu!r}")
        return mu

    def direction(self, point: Point, oracle: Oracle, seed: int) -> np.ndarray:
        self.k += 1
        g_new = oracle(point, seed)
        if self.h is None:
            h = g_new
        else:
            g_old = oracle(self.previous, seed)
            h = g_new + (1.0 - self.weight(self.k)) * (self.h - g_old)
        self.h, self.previous = h, point
        return h


# ------------------------------------------------------------------ base class
class BilevelSolver:
    """Shared outer loop: warm-started inner level, step sizes, timing and records.

    Args:
        mdp: the tabular soft MDP.
        loss: the outer loss ``f``.
        x0: starting outer variable.
        lr: outer step size ``beta``.
        inner_steps: soft Bellman steps ``N`` after each ``x`` step.
        seed: seed of the solver's random generator (sampled estimators).
        lr_schedule: ``"constant"`` (``beta``) or ``"sqrt"`` (``beta / sqrt(k)`` at step ``k``).

    Raises:
        ValueError: naming ``lr``, ``inner_steps``, ``lr_schedule`` or ``x0`` when invalid.
    """

    #: label used in benchmarks
    name = "solver"

    def __init__(
        self,
        mdp: TabularMDP,
        loss: OuterLoss,
        x0,
        lr: float = 0.1,
        inner_steps: int = 10,
        seed: Optional[int] = None,
        lr_schedule: str = "constant",
    ) -> None:
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a birl.tabular.TabularMDP, got {type(mdp).__name__}")
        if not isinstance(loss, OuterLoss):
            raise TypeError(f"loss must be a birl.losses.OuterLoss, got {type(loss).__name__}")
        if lr_schedule not in ("constant", "sqrt"):
            raise ValueError(f"lr_schedule must be 'constant' or 'sqrt', got {lr_schedule!r}")
        loss.validate(mdp)
        self.mdp, self.loss = mdp, loss
        self.x = mdp.check_x(x0, "x0").copy()
        self.lr = _positive("lr", lr)
        self.inner_steps = _at_least("inner_steps", inner_steps, 1)
        self.lr_schedule = lr_schedule
        self.rng = np.random.default_rng(seed)
        self.k = 0
        self.hypergrad_evals = 0
        self.wall_time = 0.0
        self.Q = np.zeros((mdp.n_states, mdp.n_actions))
        start = time.perf_counter()
        self._inner_update()
        self.wall_time += time.perf_counter() - start

    # ---------------------------------------------------------------- pieces
    @property
    def policy(self) -> np.ndarray:
        """The solver's current policy (``softmax(Q / tau)`` unless a subclass keeps its own)."""
        return self.pi

    def step_size(self) -> float:
        """``beta_k`` for the coming step ``k = self.k + 1``."""
        return self.lr / np.sqrt(self.k + 1) if self.lr_schedule == "sqrt" else self.lr

    def _inner_update(self) -> None:
        """``N`` soft Bellman steps ``Q <- T_{M_tau(x)}(Q)`` warm-started from the previous ``Q``,
        then ``pi = softmax(Q / tau)`` (seed 003, "Model-based bilevel RL algorithm: M-SoBiRL")."""
        r = self.mdp.reward(self.x)
        for _ in range(self.inner_steps):
            self.Q = self.mdp.soft_bellman(self.Q, r)
        self.pi = self.mdp.softmax_policy(self.Q)

    def _hypergradient(self, x: np.ndarray, pi: np.ndarray, method: str, **options) -> HypergradResult:
        """One call of a :func:`birl.hypergrad.hypergradient` estimator, counted."""
        self.hypergrad_evals += 1
        return hypergradient(self.mdp, x, self.loss, method, pi=pi, **options)

    def _next_seed(self) -> int:
        return int(self.rng.integers(_SEED_RANGE))

    def _direction(self) -> np.ndarray:
        """The direction ``d_k`` of the step ``x_{k+1} = x_k - beta_k d_k``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- loop
    def step(self) -> None:
        """One outer iteration: ``x`` step, then ``N`` warm-started inner steps (timed)."""
        start = time.perf_counter()
        direction = self._direction()
        self.x = self.x - self.step_size() * direction
        self.k += 1
        self._inner_update()
        self.wall_time += time.perf_counter() - start

    def record(self, expert_pi: Optional[np.ndarray] = None) -> Dict[str, object]:
        """Reporting only (not timed): exact ``phi(x_k) = f(x_k, pi*(x_k))``, ``f(x_k, pi_k)``,
        the policy distance to ``expert_pi`` (:func:`policy_distance`, uniform over states) and
        the counters."""
        pi_star = self.mdp.soft_solve(self.x, Q0=self.Q).pi
        return {
            "step": self.k,
            "x": self.x.copy(),
            "phi": self.loss(self.mdp, self.x, pi_star),
            "f": self.loss(self.mdp, self.x, self.policy),
            "policy_distance": None if expert_pi is None else policy_distance(self.policy, expert_pi),
            "hypergrad_evals": self.hypergrad_evals,
            "wall_time": self.wall_time,
        }

    def run(
        self,
        n_outer: int,
        callback: Optional[Callable[["BilevelSolver", dict], Optional[bool]]] = None,
        expert_pi: Optional[np.ndarray] = None,
    ) -> List[Dict[str, object]]:
        """Run ``n_outer`` outer steps.

        Returns the records (see :meth:`record`) of the starting point and of every step,
        ``n_outer + 1`` in all.  ``callback(solver, record)`` is called after each record; it
        stops the run by returning ``False``.  ``wall_time`` is cumulative and counts only the
        algorithm's own work (including the first inner warm-up), never the reporting.
        """
        n_outer = _at_least("n_outer", n_outer, 0)
        if expert_pi is not None:
            expert_pi = np.asarray(expert_pi, dtype=np.float64)
            if expert_pi.shape != self.Q.shape:
                raise ValueError(f"expert_pi must have shape {self.Q.shape}, got {expert_pi.shape}")
        history: List[Dict[str, object]] = []
        for i in range(n_outer + 1):
            if i > 0:
                self.step()
            history.append(self.record(expert_pi))
            if callback is not None and callback(self, history[-1]) is False:
                break
        return history

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, lr={self.lr}, inner_steps={self.inner_steps})"


# ------------------------------------------------------------------ SoBiRL family
class SoBiRL(BilevelSolver):
    """SoBiRL (seed 003, "Model-free Soft BiRL algorithm: SoBiRL"):

        N x : Q <- T_{M_tau(x_k)}(Q),  pi_k = softmax(Q / tau)
        1 x : x_{k+1} = x_k - beta * grad~phi(x_k, pi_k)

    Args:
        method: hypergradient estimator, ``"exact"`` (default), ``"branch"`` (Monte Carlo,
            seed 003 "Construction of estimators") or ``"myopic"``.
        optimizer: how estimator calls become a direction; :class:`GradientDescent` (default)
            or :class:`Storm`.
        **estimator_options: passed to :func:`birl.hypergrad.hypergradient` (``n_samples``,
            ``n_rollouts``, ``baseline``, ...).  Each call receives a fresh integer ``rng`` seed.
    """

    name = "SoBiRL"
    methods = ("exact", "branch", "myopic")

    def __init__(self, mdp, loss, x0, lr: float = 0.1, inner_steps: int = 10, seed: Optional[int] = None, *,
                 method: str = "exact", optimizer: Optional[GradientDescent] = None, lr_schedule: str = "constant",
                 **estimator_options) -> None:
        if method not in self.methods:
            raise ValueError(f"method must be one of {self.methods}, got {method!r}")
        if optimizer is not None and not isinstance(optimizer, GradientDescent):
            raise ValueError(f"optimizer must be a GradientDescent or Storm, got {type(optimizer).__name__}")
        self.method, self.estimator_options = method, estimator_options
        self.optimizer = GradientDescent() if optimizer is None else optimizer
        self.optimizer.reset()
        super().__init__(mdp, loss, x0, lr, inner_steps, seed, lr_schedule)

    def _oracle(self, point: Point, seed: int) -> np.ndarray:
        x, pi = point
        return self._hypergradient(x, pi, self.method, rng=seed, **self.estimator_options).grad

    def _direction(self) -> np.ndarray:
        return self.optimizer.direction((self.x.copy(), self.pi), self._oracle, self._next_seed())


class StocSoBiRL(SoBiRL):
    """Stoc-SoBiRL (seed 003, "Stochastic extension"): the ``branch`` estimator on a batch of
    ``n_samples`` with STORM momentum (:class:`Storm`, two estimator calls per step with common
    random numbers).

    Args:
        mu: STORM weight, a constant in ``(0, 1]`` or a schedule (:func:`storm_schedule`).
        n_samples: batch size ``M`` of the ``branch`` estimator.

    The defaults (``mu = 0.5``, ``M = 256``) did best on the tabular benchmark
    (``python -m agents.benchmark tabular``): the ``branch`` samples at ``(x_k, pi_k)`` and
    ``(x_{k-1}, pi_{k-1})`` share their random numbers but not their sampled paths once the policy
    changes, so the correction term is far from noise-free and a small ``mu`` accumulates it.
    """

    name = "Stoc-SoBiRL"

    def __init__(self, mdp, loss, x0, lr: float = 0.1, inner_steps: int = 10, seed: Optional[int] = None, *,
                 mu: Schedule = 0.5, n_samples: int = 256, method: str = "branch", **options) -> None:
        super().__init__(mdp, loss, x0, lr, inner_steps, seed, method=method, optimizer=Storm(mu),
                         n_samples=n_samples, **options)


class HPGD(SoBiRL):
    """Stochastic hyper policy gradient descent, *in the spirit of* Thoma et al. (NeurIPS 2024):
    our reading is plain SGD on ``x`` with the ``branch`` estimator on a small batch
    (``n_samples=10``, one rollout per branch), step size ``beta / sqrt(k)`` and no momentum.
    It is not a reimplementation of their algorithm (their estimator and inner oracle differ).
    """

    name = "HPGD"

    def __init__(self, mdp, loss, x0, lr: float = 0.1, inner_steps: int = 10, seed: Optional[int] = None, *,
                 n_samples: int = 10, n_rollouts: int = 1, lr_schedule: str = "sqrt", **options) -> None:
        super().__init__(mdp, loss, x0, lr, inner_steps, seed, method="branch", lr_schedule=lr_schedule,
                         n_samples=n_samples, n_rollouts=n_rollouts, **options)


class MSoBiRL(BilevelSolver):
    """M-SoBiRL (seed 003, "Model-based bilevel RL algorithm: M-SoBiRL"):

        1 x : w_k = w_{k-1} - xi (A_k^T A_k w_{k-1} - A_k^T b_k),  A_k = (I - gamma P_{pi_k})^T
        1 x : x_{k+1} = x_k - beta grad^phi(x_k, pi_k, V_k, w_k)
        N x : Q <- T_{M_tau(x_{k+1})}(Q);   pi_{k+1} = softmax(Q / tau)

    Args:
        xi: constant step of the ``w`` iteration; ``None`` takes ``1 / ||A_0||_2^2`` at the start
            (stable while ``||A_k||_2^2 < 2 / xi``).
        w_iters: ``w`` steps per outer step (the slide: 1).
        w0: the starting ``w_0``: ``"solve"`` (default) the least-squares solution at
            ``(x_0, pi_0)`` by one linear solve (:func:`least_squares_w`), ``"zeros"``, or an
            ``(S,)`` array.  The slide leaves ``w_0`` free; after it the updates are exactly the
            slide's.

    Caveat: one gradient step on the least-squares problem contracts the error in ``w`` only by
    ``1 - xi sigma_min(A_k)^2 = 1 - 1/cond(A_k)^2``; ``sigma_min(I - gamma P_pi)`` can be well below
    ``1 - gamma`` (about 0.03 on a 5x5 gridworld with ``gamma = 0.9``).  ``w`` then lags its target,
    and the outer step needs a small ``lr`` (or more ``w_iters``) to stay a descent direction;
    from ``w_0 = 0`` the stale ``w`` term can point the outer step uphill for hundreds of steps.
    """

    name = "M-SoBiRL"

    def __init__(self, mdp, loss, x0, lr: float = 0.1, inner_steps: int = 10, seed: Optional[int] = None, *,
                 xi: Optional[float] = None, w_iters: int = 1, w0: Union[str, np.ndarray] = "solve",
                 lr_schedule: str = "constant") -> None:
        self.xi = None if xi is None else _positive("xi", xi)
        self.w_iters = _at_least("w_iters", w_iters, 1)
        if isinstance(w0, str) and w0 not in ("solve", "zeros"):
            raise ValueError(f"w0 must be 'solve', 'zeros' or an array of shape ({mdp.n_states},), got {w0!r}")
        super().__init__(mdp, loss, x0, lr, inner_steps, seed, lr_schedule)
        start = time.perf_counter()
        self.w = self._initial_w(w0)
        if self.xi is None:
            self.xi = 1.0 / np.linalg.norm(np.eye(mdp.n_states) - mdp.gamma * mdp.P_pi(self.pi), 2) ** 2
        self.wall_time += time.perf_counter() - start

    def _initial_w(self, w0: Union[str, np.ndarray]) -> np.ndarray:
        if isinstance(w0, str):
            if w0 == "zeros":
                return np.zeros(self.mdp.n_states)
            return least_squares_w(self.mdp, self.loss, self.x, self.pi)
        w = np.array(w0, dtype=np.float64)
        if w.shape != (self.mdp.n_states,):
            raise ValueError(f"w0 must have shape ({self.mdp.n_states},), got {w.shape}")
        return w

    def _direction(self) -> np.ndarray:
        result = self._hypergradient(self.x, self.pi, "msobirl", w0=self.w, n_iters=self.w_iters, xi=self.xi)
        self.w = result.info["w"]
        return result.grad


# ------------------------------------------------------------------ baselines
class DRLHF(BilevelSolver):
    """DRLHF (Christiano et al. 2017; seed 003, "Third visit to hyper-gradient"): alternating
    minimisation that ignores the dependence of ``pi`` on ``x``:

        1 x : x_{k+1} = x_k - beta grad_x f(x_k, pi_k)        (pi_k held fixed)
        N x : Q <- T_{M_tau(x_{k+1})}(Q)

    For trajectory losses ``grad_x f = E_{d ~ pi_k}[grad_x l]``.  For pure policy losses such as
    :class:`birl.losses.DemonstrationNLL` ``grad_x f = 0``: DRLHF does not move.  That is a genuine
    property of the baseline, not a bug.  It calls no hypergradient estimator
    (``hypergrad_evals`` stays 0).
    """

    name = "DRLHF"

    def _direction(self) -> np.ndarray:
        return _loss_grads(self.mdp, self.loss, self.x, self.pi)[0]


class PBRL(BilevelSolver):
    """Penalty-based bilevel RL, our tabular reading of Shen et al. (ICML 2024):

        min_{x, theta} f(x, pi_theta) + lam (V*_x(rho) - V^{pi_theta}_x(rho)),   pi_theta = softmax(theta)

    with soft values.  Each outer step takes ``policy_steps`` gradient steps on the logits
    ``theta`` for ``f(x_k, pi_theta) - lam V^{pi_theta}_{x_k}(rho)`` (differentiable soft policy
    evaluation ``V = (I - gamma P_pi)^{-1} sum_a pi (r - tau log pi)``), then an ``x`` step on

        grad_x f(x, pi_theta) + lam (grad_x V*_x(rho) - grad_x V^{pi_theta}_x(rho)),

    where ``grad_x V^pi_x(rho) = sum_{s,a} d_pi(s, a) grad r_x(s, a)`` with the unnormalised
    discounted occupancy ``d_pi = occupancy / (1 - gamma)``, and the envelope theorem gives
    ``grad_x V*`` the same form with ``pi*(x)``, approximated by the warm-started
    ``softmax(Q / tau)`` of the shared inner level.  :attr:`policy` is ``pi_theta``.

    Args:
        lam: penalty weight ``lambda > 0``.
        policy_lr: step size of the ``theta`` steps.
        policy_steps: ``theta`` steps per outer step (default ``inner_steps``).
    """

    name = "PBRL"

    def __init__(self, mdp, loss, x0, lr: float = 0.1, inner_steps: int = 10, seed: Optional[int] = None, *,
                 lam: float = 1.0, policy_lr: float = 1.0, policy_steps: Optional[int] = None,
                 lr_schedule: str = "constant") -> None:
        self.lam = _positive("lam", lam)
        self.policy_lr = _positive("policy_lr", policy_lr)
        self.policy_steps = inner_steps if policy_steps is None else _at_least("policy_steps", policy_steps, 1)
        self._P = torch.as_tensor(mdp.P)
        self._rho = torch.as_tensor(mdp.rho)
        super().__init__(mdp, loss, x0, lr, inner_steps, seed, lr_schedule)
        self.theta = torch.tensor(self.Q / mdp.tau, dtype=torch.float64)

    @property
    def policy(self) -> np.ndarray:
        theta = getattr(self, "theta", None)
        return self.pi if theta is None else torch.softmax(theta, dim=1).numpy()

    def soft_value(self, pi: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``V^pi(rho)`` by differentiable soft policy evaluation (seed 003, "Soft value function")."""
        P_pi = torch.einsum("sa,sat->st", pi, self._P)
        b = (pi * (r - self.mdp.tau * torch.log(pi.clamp_min(1e-300)))).sum(1)
        V = torch.linalg.solve(torch.eye(self.mdp.n_states, dtype=torch.float64) - self.mdp.gamma * P_pi, b)
        return self._rho @ V

    def _policy_steps(self) -> None:
        """Gradient steps on ``theta`` for ``f(x, pi_theta) - lam V^{pi_theta}_x(rho)``."""
        xt = torch.as_tensor(self.x, dtype=torch.float64)
        r = torch.as_tensor(self.mdp.reward(self.x))
        theta = self.theta.clone().requires_grad_(True)
        for _ in range(self.policy_steps):
            pi = torch.softmax(theta, dim=1)
            objective = self.loss.value(self.mdp, xt, pi) - self.lam * self.soft_value(pi, r)
            (g,) = torch.autograd.grad(objective, theta)
            with torch.no_grad():
                theta -= self.policy_lr * g
        self.theta = theta.detach()

    def _occupancy_vjp(self, pi: np.ndarray) -> np.ndarray:
        """``grad_x V^pi_x(rho) = sum_{s,a} d_pi(s, a) grad r_x(s, a)`` (unnormalised occupancy)."""
        return self.mdp.reward_vjp(self.x, self.mdp.occupancy(pi) / (1.0 - self.mdp.gamma))

    def _direction(self) -> np.ndarray:
        self._policy_steps()
        pi_theta = self.policy
        penalty = self._occupancy_vjp(self.pi) - self._occupancy_vjp(pi_theta)
        return _loss_grads(self.mdp, self.loss, self.x, pi_theta)[0] + self.lam * penalty
