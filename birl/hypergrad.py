"""Hypergradients of ``phi(x) = f(x, pi*(x))`` for tabular soft bilevel RL (DESIGN.md section 2).

Notation (seed 003): ``M = I - gamma P_pi``; ``U`` maps state values to state-action values,
``(U v)(s, a) = v(s) - gamma sum_{s'} P(s'|s, a) v(s')``; ``C = diag(pi) grad_pi f`` as an
``(S, A)`` table.  The soft-optimal policy satisfies (seed 003, "The fixed-point equation")

    tau * grad log pi*(a|s) = grad Q*(s, a) - grad V*(s)
    grad V*  = M^{-1} (sum_a pi grad r)                      ("Absorb P into an expectation")
    grad Q*  = grad r + gamma P grad V*

so that, with ``b = U^T C`` and ``w = M^{-T} b`` (the least-squares variable of M-SoBiRL),

    grad phi = grad_x f + (1/tau) grad r^T C - (1/tau) grad_x Phi(x, V)^T w        (model-based
                                                                 hyper-gradient, seed 003)

where ``grad_x Phi(x, V)^T w = sum_s w(s) sum_a pi(a|s) grad r(s, a)``.  Every estimator below
reduces to *weights* on ``grad r`` (a vector-Jacobian product through the reward), plus weights
on ``grad V*`` that one linear solve turns into weights on ``grad r``.  This makes them exact
for linear and non-linear (torch module) rewards alike and keeps them vectorised.

Methods (all return a :class:`HypergradResult`):

``exact``    implicit differentiation by one linear solve (ground truth).
``msobirl``  the M-SoBiRL w-iteration ``w <- w - xi (A^T A w - A^T b)``, ``A = M^T`` (seed 003,
             "Model-based bilevel RL algorithm: M-SoBiRL"); converges to ``exact``.
``branch``   Monte Carlo: ``grad Q - grad V`` at each visited ``(s_h, a_h)`` from two fresh
             rollouts branched at ``s_h`` (one starting with ``a_h``, one with ``a ~ pi``),
             independent of the sampled segment (seed 003, "Construction of estimators").
``myopic``   the released paper code's surrogate: ``grad(Q - V)(s, a)`` replaced by the one-step
             reward advantage ``grad r(s, a) - E_{a'~pi} grad r(s, a')``.  Biased when gamma > 0.
``same_trajectory``  the tempting shortcut ``grad Q(s_h, a_h) ~ grad r(s_h, a_h) + gamma grad V(s_{h+1})``
             with ``s_{h+1}`` taken from the loss's own segment (exact ``grad V``).  Biased because
             ``l`` depends on ``s_{h+1}``; kept to demonstrate that bias in tests.

Joint losses (:class:`birl.losses.JointLoss`, ``sum_i w_i f_i``, AIHF of seed 002): ``exact``
and ``msobirl`` take the sum at once (they only need ``f`` by autograd); the other estimators
run on each part with the same policy and the results are summed with the weights.

For trajectory losses (:class:`birl.losses.TrajectoryLoss`) the score-function form is used
(seed 003, "Second visit to hyper-gradient"):

    grad phi = E[grad_x l] + (1/tau) E[ l * sum_i sum_h grad(Q* - V*)(s^i_h, a^i_h) ]

``myopic`` and ``same_trajectory`` evaluate that expectation exactly (by enumerating segments)
when ``n_samples`` is None, so their *bias* can be measured without Monte Carlo noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import numpy as np
import torch

from birl.losses import JointLoss, OuterLoss, TrajectoryLoss
from birl.tabular import SoftSolution, TabularMDP

__all__ = ["HypergradResult", "hypergradient", "METHODS", "discounted_visits", "default_rollout_horizon", "leave_one_out"]

METHODS = ("exact", "msobirl", "branch", "myopic", "same_trajectory")


@dataclass
class HypergradResult:
    """A hypergradient estimate.

    Attributes:
        grad: estimate of ``grad phi(x)``, shape ``(n_params,)``.
        value: ``f(x, pi)`` at the policy used (exact, or the sample mean for sampled losses).
        method: the estimator's name.
        info: method-specific extras (``w`` and ``residual`` for ``msobirl``; ``n_rollout_steps``).
    """

    grad: np.ndarray
    value: float
    method: str
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------- pieces
def _rng(rng: Union[None, int, np.random.Generator]) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def default_rollout_horizon(gamma: float, tol: float = 1e-6) -> int:
    """Smallest ``T`` with ``gamma^T <= tol``: truncation of the discounted sums in rollouts."""
    if gamma == 0.0:
        return 1
    return int(np.ceil(np.log(tol) / np.log(gamma)))


def _autograd_f(mdp: TabularMDP, loss: OuterLoss, x: np.ndarray, pi: np.ndarray):
    """``f(x, pi)``, ``grad_x f`` and ``C = pi * grad_pi f``."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    pit = torch.tensor(pi, dtype=torch.float64, requires_grad=True)
    f = loss.value(mdp, xt, pit)
    gx, gpi = torch.autograd.grad(f, (xt, pit), allow_unused=True)
    gx = np.zeros_like(x) if gx is None else gx.numpy()
    gpi = np.zeros_like(pi) if gpi is None else gpi.numpy()
    return float(f.detach()), gx, pi * gpi


def _grad_r_weights(mdp: TabularMDP, pi: np.ndarray, c_r: np.ndarray, c_V: np.ndarray) -> np.ndarray:
    """Turn weights on ``grad r`` (``c_r``, ``(S, A)``) and on ``grad V*`` (``c_V``, ``(S,)``) into
    weights on ``grad r`` alone, using ``grad V* = M^{-1}(sum_a pi grad r)``."""
    M = np.eye(mdp.n_states) - mdp.gamma * mdp.P_pi(pi)
    y = np.linalg.solve(M.T, c_V)
    return c_r + pi * y[:, None]


def _q_to_rv(mdp: TabularMDP, c_Q: np.ndarray, c_V: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Weights on ``grad Q* = grad r + gamma P grad V*`` become weights on ``grad r`` and ``grad V*``."""
    return c_Q, c_V + mdp.gamma * np.einsum("sa,sat->t", c_Q, mdp.P)


def discounted_visits(
    mdp: TabularMDP,
    pi: np.ndarray,
    states: np.ndarray,
    first_actions: Optional[np.ndarray],
    weights: np.ndarray,
    horizon: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Weighted discounted visitation of rollouts: ``sum_b weights[b] sum_t gamma^t e_{s^b_t, a^b_t}``.

    Each rollout ``b`` starts in ``states[b]`` with action ``first_actions[b]`` (or ``a ~ pi`` where
    ``first_actions`` is None) and follows ``pi`` for ``horizon`` steps.  The result is an
    ``(S, A)`` table: its reward VJP is the Monte Carlo estimate of ``sum_b weights[b] grad Q``
    (or ``grad V`` with sampled first actions).
    """
    S, A = mdp.n_states, mdp.n_actions
    out = np.zeros(S * A)
    s = np.asarray(states, dtype=np.int64)
    a = mdp.sample_actions(pi, s, rng) if first_actions is None else np.asarray(first_actions, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64).copy()
    for t in range(horizon):
        out += np.bincount(s * A + a, weights=w, minlength=S * A)
        if t + 1 < horizon:
            s = mdp.step_states(s, a, rng)
            a = mdp.sample_actions(pi, s, rng)
            w *= mdp.gamma
    return out.reshape(S, A)


def _branch_weights(mdp, pi, s, a, coef, n_rollouts, horizon, rng) -> np.ndarray:
    """Monte Carlo weights for ``sum_k coef[k] * grad(Q* - V*)(s[k], a[k])`` (``branch``)."""
    s = np.repeat(np.asarray(s).ravel(), n_rollouts)
    a = np.repeat(np.asarray(a).ravel(), n_rollouts)
    c = np.repeat(np.asarray(coef, dtype=np.float64).ravel(), n_rollouts) / n_rollouts
    W = discounted_visits(mdp, pi, s, a, c, horizon, rng)  # grad Q rollouts, first action given
    W -= discounted_visits(mdp, pi, s, None, c, horizon, rng)  # grad V rollouts, a ~ pi
    return W


def _segment_mass(mdp: TabularMDP, loss: TrajectoryLoss, x: np.ndarray, pi: np.ndarray):
    """Enumerated segments and their loss mass ``q_d = sum over pair slots of P(pair) l(pair)``,
    so that ``E[l * sum_i g(d_i)] = sum_d q_d g(d)`` for any per-segment quantity ``g``."""
    with torch.no_grad():
        p = loss.segment_probs(mdp, torch.as_tensor(pi))
        L = loss.pair_losses(mdp, torch.as_tensor(x))
        q = p * (L @ p + L.T @ p)
    states, actions, _ = loss.segments(mdp)
    return states, actions, q.numpy()


def _sample_pairs(mdp: TabularMDP, loss: TrajectoryLoss, x: np.ndarray, pi: np.ndarray, n: int, rng):
    """Sample ``n`` segment tuples from ``pi``; returns states/actions ``(n, I, H)``, the per-sample
    losses ``l`` and ``E_n[grad_x l]``."""
    I, H = loss.n_segments, loss.horizon
    st, ac = mdp.sample_trajectories(pi, n * I, H, rng, start=loss.start_dist(mdp))
    st, ac = st.reshape(n, I, H), ac.reshape(n, I, H)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    lvals = loss.sample_loss(mdp, xt, torch.as_tensor(st), torch.as_tensor(ac))
    (gx,) = torch.autograd.grad(lvals.mean(), xt)
    return st, ac, lvals.detach().numpy(), gx.numpy()


def _scatter(S: int, A: int, s: np.ndarray, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.bincount((s * A + a).ravel(), weights=w.ravel(), minlength=S * A).reshape(S, A)


# ----------------------------------------------------------------------- methods
def _exact(mdp, x, loss, pi, **_):
    f, gx, C = _autograd_f(mdp, loss, x, pi)
    c_r, c_V = _q_to_rv(mdp, C, -C.sum(1))
    W = _grad_r_weights(mdp, pi, c_r, c_V)
    return HypergradResult(gx + mdp.reward_vjp(x, W) / mdp.tau, f, "exact")


def _msobirl(mdp, x, loss, pi, n_iters: int = 1000, xi: Optional[float] = None, w0=None, **_):
    """M-SoBiRL: ``w_k = w_{k-1} - xi (A_k^T A_k w_{k-1} - A_k^T b_k)``, ``A_k = (I - gamma P_pi)^T``,
    ``b_k = U^T diag(pi) grad_pi f`` and
    ``grad phi ~ grad_x f + (1/tau) grad r^T diag(pi) grad_pi f - (1/tau) grad_x Phi(x, V)^T w``."""
    f, gx, C = _autograd_f(mdp, loss, x, pi)
    A = (np.eye(mdp.n_states) - mdp.gamma * mdp.P_pi(pi)).T
    b = C.sum(1) - mdp.gamma * np.einsum("sa,sat->t", C, mdp.P)
    if xi is None:
        xi = 1.0 / np.linalg.norm(A, 2) ** 2
    if not xi > 0:
        raise ValueError(f"xi must be positive, got {xi!r}")
    w = np.zeros(mdp.n_states) if w0 is None else np.array(w0, dtype=np.float64)
    if w.shape != (mdp.n_states,):
        raise ValueError(f"w0 must have shape ({mdp.n_states},), got {w.shape}")
    for _ in range(int(n_iters)):  # O(S^2) per step: A^T (A w - b) without forming A^T A
        w = w - xi * (A.T @ (A @ w - b))
    grad = gx + (mdp.reward_vjp(x, C) - mdp.reward_vjp(x, pi * w[:, None])) / mdp.tau
    return HypergradResult(grad, f, "msobirl", {"w": w, "residual": float(np.linalg.norm(A @ w - b)), "xi": xi})


def leave_one_out(lvals):
    """``l_m - mean_{m' != m} l_m'`` (numpy array or torch tensor of shape ``[M]``): a baseline that
    keeps the score-function term unbiased (``E[grad(Q - V)(s, a)] = 0`` under ``a ~ pi`` and the
    baseline is independent of sample m)."""
    n = lvals.shape[0]
    if n < 2:
        return lvals
    return lvals - (lvals.sum() - lvals) / (n - 1)


def _branch(
    mdp, x, loss, pi, rng=None, n_samples: int = 1000, n_rollouts: int = 1, rollout_horizon=None, baseline: bool = True, **_
):
    rng = _rng(rng)
    T = rollout_horizon or default_rollout_horizon(mdp.gamma)
    if loss.kind == "trajectory":
        st, ac, lvals, gx = _sample_pairs(mdp, loss, x, pi, n_samples, rng)
        centred = leave_one_out(lvals) if baseline else lvals
        coef = np.broadcast_to((centred / n_samples)[:, None, None], st.shape)
        W = _branch_weights(mdp, pi, st, ac, coef, n_rollouts, T, rng)
        return HypergradResult(gx + mdp.reward_vjp(x, W) / mdp.tau, float(lvals.mean()), "branch", {"rollout_horizon": T})
    # policy loss: sum_{s,a} C(s,a) grad(Q - V)(s,a), (s,a) sampled with probability |C| / sum|C|
    f, gx, C = _autograd_f(mdp, loss, x, pi)
    Z = np.abs(C).sum()
    if Z == 0:
        return HypergradResult(gx, f, "branch", {"rollout_horizon": T})
    idx = rng.choice(C.size, size=n_samples, p=(np.abs(C) / Z).ravel())
    s, a = np.divmod(idx, mdp.n_actions)
    coef = np.sign(C.ravel()[idx]) * Z / n_samples
    W = _branch_weights(mdp, pi, s, a, coef, n_rollouts, T, rng)
    return HypergradResult(gx + mdp.reward_vjp(x, W) / mdp.tau, f, "branch", {"rollout_horizon": T})


def _trajectory_weights(mdp, loss, x, pi, rng, n_samples):
    """Visited ``(s_h, a_h)`` with their coefficients ``l / n``, either sampled or enumerated
    (``n_samples=None``: exact expectation).  Returns ``(states, actions, coef, value, grad_x term)``."""
    if n_samples is None:
        f, gx, _ = _autograd_f(mdp, loss, x, pi)
        st, ac, q = _segment_mass(mdp, loss, x, pi)
        return st, ac, np.broadcast_to(q[:, None], st.shape), f, gx
    st, ac, lvals, gx = _sample_pairs(mdp, loss, x, pi, n_samples, _rng(rng))
    return st, ac, np.broadcast_to((lvals / n_samples)[:, None, None], st.shape), float(lvals.mean()), gx


def _myopic(mdp, x, loss, pi, rng=None, n_samples: Optional[int] = None, **_):
    """Released-code surrogate: ``mean(l) + mean(l.detach() * (1/tau) sum_h [r(s_h,a_h) - E_pi r(s_h,.)])``."""
    S, A = mdp.n_states, mdp.n_actions
    if loss.kind == "trajectory":
        st, ac, coef, f, gx = _trajectory_weights(mdp, loss, x, pi, rng, n_samples)
        C = _scatter(S, A, st, ac, coef)
    else:
        f, gx, C = _autograd_f(mdp, loss, x, pi)
    W = C - pi * C.sum(1, keepdims=True)
    return HypergradResult(gx + mdp.reward_vjp(x, W) / mdp.tau, f, "myopic")


def _same_trajectory(mdp, x, loss, pi, rng=None, n_samples: Optional[int] = None, **_):
    """Biased shortcut: ``grad Q(s_h, a_h) ~ grad r(s_h, a_h) + gamma grad V(s_{h+1})`` with the
    segment's own ``s_{h+1}`` (last step: ``E_{s'} grad V(s')``, which is unbiased)."""
    if loss.kind != "trajectory":
        raise ValueError("method 'same_trajectory' needs a trajectory loss (e.g. PreferenceLoss)")
    S, A = mdp.n_states, mdp.n_actions
    st, ac, coef, f, gx = _trajectory_weights(mdp, loss, x, pi, rng, n_samples)
    c_r = _scatter(S, A, st, ac, coef)
    c_V = -np.bincount(st.ravel(), weights=coef.ravel(), minlength=S)
    c_V += mdp.gamma * np.bincount(st[..., 1:].ravel(), weights=coef[..., :-1].ravel(), minlength=S)
    last = _scatter(S, A, st[..., -1], ac[..., -1], coef[..., -1])
    c_V += mdp.gamma * np.einsum("sa,sat->t", last, mdp.P)
    W = _grad_r_weights(mdp, pi, c_r, c_V)
    return HypergradResult(gx + mdp.reward_vjp(x, W) / mdp.tau, f, "same_trajectory")


def _joint(mdp, x, loss, pi, method: str, rng=None, **options):
    """Weighted sum of the parts' estimates, ``sum_i w_i grad phi_i`` (the hypergradient is linear
    in ``f``; :class:`birl.losses.JointLoss`, seed 002 slide "Extension").  Sampled parts share one
    random generator, so their draws are independent."""
    rng = _rng(rng)
    grad, value, parts = np.zeros_like(x), 0.0, []
    for w, part in zip(loss.weights, loss.parts):
        if w == 0:
            continue
        res = _DISPATCH[method](mdp, x, part, pi, rng=rng, **options)
        grad += w * res.grad
        value += w * res.value
        parts.append(res)
    return HypergradResult(grad, float(value), method, {"parts": parts})


_DISPATCH = {
    "exact": _exact,
    "msobirl": _msobirl,
    "branch": _branch,
    "myopic": _myopic,
    "same_trajectory": _same_trajectory,
}


def hypergradient(
    mdp: TabularMDP,
    x,
    loss: OuterLoss,
    method: str = "exact",
    *,
    solution: Optional[SoftSolution] = None,
    pi: Optional[np.ndarray] = None,
    tol: float = 1e-10,
    **options,
) -> HypergradResult:
    """Estimate ``grad phi(x)`` for ``phi(x) = f(x, pi*(x))``.

    Args:
        mdp: the tabular soft MDP.
        x: outer variable, shape ``(mdp.n_params,)``.
        loss: an :class:`birl.losses.OuterLoss`.
        method: one of :data:`METHODS`.
        solution: a precomputed inner solution (else ``mdp.soft_solve(x, tol)``).
        pi: use this policy instead of ``pi*(x)`` (inexact inner solutions, as in the solvers).
        tol: inner solve tolerance.
        **options: ``msobirl``: ``n_iters``, ``xi``, ``w0``.  ``branch``: ``n_samples``,
            ``n_rollouts``, ``rollout_horizon``, ``rng`` (seed or Generator), ``baseline``
            (trajectory losses: leave-one-out loss baseline in the score term, default True).  ``myopic`` and
            ``same_trajectory``: ``n_samples`` (None: exact expectation), ``rng``.

    Returns:
        :class:`HypergradResult`.
    """
    if method not in _DISPATCH:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(loss, OuterLoss):
        raise TypeError(f"loss must be a birl.losses.OuterLoss, got {type(loss).__name__}")
    x = mdp.check_x(x)
    loss.validate(mdp)
    if pi is None:
        pi = (solution if solution is not None else mdp.soft_solve(x, tol=tol)).pi
    pi = np.asarray(pi, dtype=np.float64)
    if pi.shape != (mdp.n_states, mdp.n_actions):
        raise ValueError(f"pi must have shape ({mdp.n_states}, {mdp.n_actions}), got {pi.shape}")
    for name in ("n_samples", "n_rollouts", "rollout_horizon", "n_iters"):
        v = options.get(name)
        if v is not None and (int(v) != v or v < (0 if name == "n_iters" else 1)):
            kind = "non-negative" if name == "n_iters" else "positive"
            raise ValueError(f"{name} must be a {kind} integer, got {v!r}")
    if isinstance(loss, JointLoss) and method not in ("exact", "msobirl"):
        # sampled estimators depend on the loss kind: run them part by part
        return _joint(mdp, x, loss, pi, method, **options)
    return _DISPATCH[method](mdp, x, loss, pi, **options)
