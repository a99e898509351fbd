"""Outer (upper-level) losses ``f(x, pi)`` for tabular soft bilevel RL (DESIGN.md section 1).

The hyper-objective is ``phi(x) = f(x, pi*(x))`` (seed 003, "Bilevel RL formulation").  Every
loss here is a differentiable torch function of the outer variable ``x`` and of the policy table
``pi`` (shape ``(S, A)``), so the ``exact`` hypergradient can take ``grad_x f`` and
``grad_pi f`` by autograd.  Two kinds exist:

* *policy losses* depend on ``pi`` directly (demonstration NLL, supervised NLL, the synthetic
  loss of the paper's random-MDP experiment);
* *trajectory losses* are expectations over segments sampled from ``pi``,
  ``f(x, pi) = E_{d_1..d_I ~ rho(d; pi)}[l(d_1, .., d_I; x)]`` (seed 003, "Model-free bilevel
  RL").  They also give the per-sample loss ``l`` used by the sampled estimators, and compute
  ``f`` exactly by enumerating every segment in the support of ``P``.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from birl._checks import nonempty_list_of
from birl.rewards import as_numpy
from birl.tabular import TabularMDP

__all__ = [
    "OuterLoss",
    "PolicyLoss",
    "DemonstrationNLL",
    "SupervisedNLL",
    "SyntheticLoss",
    "TrajectoryLoss",
    "PreferenceLoss",
    "FixedPreferenceLoss",
    "JointLoss",
    "enumerate_segments",
]


class OuterLoss:
    """Base class: ``value(mdp, x, pi)`` returns ``f(x, pi)`` as a differentiable torch scalar."""

    #: ``"policy"`` or ``"trajectory"``; decides how sampled estimators treat the loss.
    kind: str = "policy"

    def value(self, mdp: TabularMDP, x: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, mdp: TabularMDP) -> None:
        """Raise ``ValueError`` when the loss does not fit ``mdp``."""

    def __call__(self, mdp: TabularMDP, x, pi) -> float:
        """``f(x, pi)`` as a float, from numpy or torch inputs."""
        with torch.no_grad():
            return float(self.value(mdp, _t(x), _t(pi)))


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64) if not isinstance(a, torch.Tensor) else a, dtype=torch.float64)


def _log(pi: torch.Tensor) -> torch.Tensor:
    return torch.log(pi.clamp_min(1e-300))


class PolicyLoss(OuterLoss):
    kind = "policy"


class DemonstrationNLL(PolicyLoss):
    """ML-IRL loss ``phi(x) = -sum_{s,a} weights[s,a] log pi*_x(a|s)`` (seed 002; DESIGN.md section 1).

    Args:
        weights: non-negative ``(S, A)`` array, e.g. an expert's discounted occupancy measure or
            state-action counts of demonstrations.
    """

    def __init__(self, weights) -> None:
        w = as_numpy(weights, "weights")
        if w.ndim != 2:
            raise ValueError(f"weights must have shape (S, A), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("weights must be finite and non-negative")
        self.weights = w
        self._w = torch.as_tensor(w)

    def validate(self, mdp: TabularMDP) -> None:
        if self.weights.shape != (mdp.n_states, mdp.n_actions):
            raise ValueError(
                f"weights must have shape ({mdp.n_states}, {mdp.n_actions}) to match the MDP, got {self.weights.shape}"
            )

    def value(self, mdp, x, pi):
        return -(self._w * _log(pi)).sum()

    @classmethod
    def from_expert(cls, mdp: TabularMDP, expert_pi: np.ndarray) -> "DemonstrationNLL":
        """Weights = the expert's normalised discounted occupancy measure under ``mdp``."""
        return cls(mdp.occupancy(np.asarray(expert_pi, dtype=np.float64)))

    @classmethod
    def from_samples(cls, mdp: TabularMDP, states, actions) -> "DemonstrationNLL":
        """Weights = empirical frequencies of demonstrated ``(s, a)`` pairs."""
        counts = np.zeros((mdp.n_states, mdp.n_actions))
        np.add.at(counts, (np.asarray(states).ravel(), np.asarray(actions).ravel()), 1.0)
        return cls(counts / max(1.0, counts.sum()))


class SupervisedNLL(DemonstrationNLL):
    """Classification as a horizon-1 soft policy (seed 001).

    States are inputs, actions are class labels and the inner problem is the entropy-regularised
    one-step policy problem, whose solution is ``pi*(y|s) = softmax(r_x(s, .) / tau)``.  The outer
    loss is the data negative log-likelihood ``-(1/n) sum_i log pi*(y_i|s_i)``.  Requires
    ``gamma == 0`` (a horizon-1 problem).
    """

    def __init__(self, inputs, labels, n_inputs: int, n_classes: int) -> None:
        inputs, labels = np.asarray(inputs).ravel(), np.asarray(labels).ravel()
        if inputs.shape != labels.shape:
            raise ValueError(f"inputs and labels must have the same length, got {inputs.shape} and {labels.shape}")
        if inputs.size == 0:
            raise ValueError("inputs must not be empty")
        if inputs.min() < 0 or inputs.max() >= n_inputs:
            raise ValueError(f"inputs must be integers in [0, {n_inputs})")
        if labels.min() < 0 or labels.max() >= n_classes:
            raise ValueError(f"labels must be integers in [0, {n_classes})")
        counts = np.zeros((n_inputs, n_classes))
        np.add.at(counts, (inputs, labels), 1.0)
        super().__init__(counts / inputs.size)

    def validate(self, mdp: TabularMDP) -> None:
        super().validate(mdp)
        if mdp.gamma != 0.0:
            raise ValueError(f"SupervisedNLL is a horizon-1 loss: the MDP needs gamma=0, got gamma={mdp.gamma}")


class SyntheticLoss(PolicyLoss):
    """``f(x, pi) = 0.5 ||x||^2 + 0.5 ||pi||_F^2``: the upper-level loss of the random-MDP
    experiment of Yang, Gao & Yuan (AISTATS 2025), the paper behind seed 003."""

    def value(self, mdp, x, pi):
        return 0.5 * (x * x).sum() + 0.5 * (pi * pi).sum()


# --------------------------------------------------------------------- segments
def enumerate_segments(mdp: TabularMDP, horizon: int, start: np.ndarray, max_segments: int = 20_000):
    """All length-``horizon`` segments ``(s_0, a_0, ..., s_{H-1}, a_{H-1})`` with non-zero
    probability under the support of ``start`` and ``P`` (any policy with full support).

    Returns ``(states, actions, log_base)`` with ``states``/``actions`` int arrays ``(N, H)`` and
    ``log_base`` the log of the policy-independent factor ``start(s_0) prod P(s_{h+1}|s_h, a_h)``.
    """
    S, A = mdp.n_states, mdp.n_actions
    s0 = np.flatnonzero(start > 0)
    states, actions, logp = s0[:, None], np.empty((s0.size, 0), dtype=np.int64), np.log(start[s0])
    for h in range(horizon):
        n = states.shape[0]
        states = np.repeat(states, A, axis=0)
        actions = np.concatenate([np.repeat(actions, A, axis=0), np.tile(np.arange(A), n)[:, None]], axis=1)
        logp = np.repeat(logp, A)
        if h + 1 < horizon:
            nxt = mdp.P[states[:, -1], actions[:, -1]]  # (n*A, S)
            rows, cols = np.nonzero(nxt > 0)
            states = np.concatenate([states[rows], cols[:, None]], axis=1)
            actions = actions[rows]
            logp = logp[rows] + np.log(nxt[rows, cols])
        if states.shape[0] > max_segments:
            raise ValueError(
                f"exact enumeration needs more than max_segments={max_segments} segments "
                f"(horizon={horizon}); use a shorter horizon, a sparser start distribution, or sampled estimators"
            )
    return states.astype(np.int64), actions.astype(np.int64), logp


class TrajectoryLoss(OuterLoss):
    """``f(x, pi) = E_{d_1, .., d_I ~ rho(d; pi)} [l(d_1, .., d_I; x)]`` (seed 003, "Model-free bilevel RL").

    Subclasses define :meth:`sample_loss` on segment tuples; segments have length ``horizon``
    and start from ``start`` (default ``mdp.rho``).
    """

    kind = "trajectory"
    n_segments: int = 2

    def __init__(self, horizon: int, start: Optional[np.ndarray] = None, max_segments: int = 20_000) -> None:
        if int(horizon) != horizon or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        self.horizon = int(horizon)
        self.start = None if start is None else as_numpy(start, "start")
        self.max_segments = max_segments
        self._cache = {}

    def start_dist(self, mdp: TabularMDP) -> np.ndarray:
        if self.start is None:
            return mdp.rho
        if self.start.shape != (mdp.n_states,):
            raise ValueError(f"start must have shape ({mdp.n_states},), got {self.start.shape}")
        return self.start

    def sample_loss(self, mdp: TabularMDP, x: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``l``: ``states``/``actions`` are ``(M, I, H)`` int tensors; returns ``(M,)``."""
        raise NotImplementedError

    def segments(self, mdp: TabularMDP):
        """Cached :func:`enumerate_segments` for ``mdp``."""
        if self._cache.get("mdp") is not mdp:  # holds the MDP itself: no stale hit on a reused id
            self._cache = {"mdp": mdp, "segments": enumerate_segments(mdp, self.horizon, self.start_dist(mdp), self.max_segments)}
        return self._cache["segments"]

    def segment_probs(self, mdp: TabularMDP, pi: torch.Tensor) -> torch.Tensor:
        """``rho(d; pi)`` for every enumerated segment, differentiable in ``pi``."""
        states, actions, log_base = self.segments(mdp)
        logpi = _log(pi)[torch.as_tensor(states), torch.as_tensor(actions)].sum(-1)
        return torch.exp(logpi + torch.as_tensor(log_base))

    def pair_losses(self, mdp: TabularMDP, x: torch.Tensor) -> torch.Tensor:
        """``L[i, j] = l(d_i, d_j; x)`` over all enumerated segments (two-segment losses only)."""
        if self.n_segments != 2:
            raise NotImplementedError("exact enumeration is implemented for pairs of segments")
        states, actions, _ = self.segments(mdp)
        n = states.shape[0]
        s, a = torch.as_tensor(states), torch.as_tensor(actions)
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        i, j = i.reshape(-1), j.reshape(-1)
        st = torch.stack([s[i], s[j]], dim=1)
        at = torch.stack([a[i], a[j]], dim=1)
        return self.sample_loss(mdp, x, st, at).reshape(n, n)

    def value(self, mdp, x, pi):
        p = self.segment_probs(mdp, pi)
        return p @ self.pair_losses(mdp, x) @ p


class PreferenceLoss(TrajectoryLoss):
    """Bradley-Terry preference loss on pairs of segments sampled from ``pi`` (RLHF; seed 003).

    ``l(d_1, d_2; x) = -[y log sigma(R_x(d_1) - R_x(d_2)) + (1 - y) log sigma(R_x(d_2) - R_x(d_1))]``
    with ``R_x(d) = sum_h r_x(s_h, a_h)`` (Christiano et al. 2017, eq. 1) and the label given in
    expectation by a Bradley-Terry teacher on the TRUE reward:
    ``y = sigma(beta * (R_true(d_1) - R_true(d_2)))`` (``beta = inf``: a noiseless teacher).
    Using the expected label is unbiased for ``E_y[l]`` because ``l`` is linear in ``y``.

    Args:
        true_reward: ``(S, A)`` table of the teacher's reward.
        horizon: segment length ``H``.
        beta: teacher rationality.
        start: segment start distribution (default ``mdp.rho``).
    """

    def __init__(self, true_reward, horizon: int = 2, beta: float = 1.0, start=None, max_segments: int = 20_000):
        super().__init__(horizon, start, max_segments)
        self.true_reward = as_numpy(true_reward, "true_reward")
        if self.true_reward.ndim != 2:
            raise ValueError(f"true_reward must have shape (S, A), got {self.true_reward.shape}")
        if not beta > 0:
            raise ValueError(f"beta must be positive (or inf), got {beta!r}")
        self.beta = float(beta)
        self._true = torch.as_tensor(self.true_reward)

    def validate(self, mdp: TabularMDP) -> None:
        if self.true_reward.shape != (mdp.n_states, mdp.n_actions):
            raise ValueError(
                f"true_reward must have shape ({mdp.n_states}, {mdp.n_actions}), got {self.true_reward.shape}"
            )
        self.start_dist(mdp)

    def labels(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Expected teacher label ``P(d_1 preferred)`` from the TRUE reward."""
        R = self._true[states, actions].sum(-1)  # (M, 2)
        diff = R[:, 0] - R[:, 1]
        if np.isinf(self.beta):
            return (diff > 0).double() + 0.5 * (diff == 0).double()
        return torch.sigmoid(self.beta * diff)

    def sample_loss(self, mdp, x, states, actions):
        r = mdp.reward_fn.torch(x)
        R = r[states, actions].sum(-1)  # (M, 2)
        logit = R[:, 0] - R[:, 1]
        y = self.labels(states, actions)
        # -log sigmoid(z) = softplus(-z)
        return y * F.softplus(-logit) + (1.0 - y) * F.softplus(logit)

    def accuracy(self, mdp: TabularMDP, x, pi) -> float:
        """Expected agreement of ``sign(R_x(d_1) - R_x(d_2))`` with the teacher, pairs ~ ``pi``."""
        with torch.no_grad():
            p = self.segment_probs(mdp, _t(pi))
            states, actions, _ = self.segments(mdp)
            r, t = torch.as_tensor(mdp.reward(x)), self._true
            s, a = torch.as_tensor(states), torch.as_tensor(actions)
            Rx, Rt = r[s, a].sum(-1), t[s, a].sum(-1)
            dx, dt = Rx[:, None] - Rx[None, :], Rt[:, None] - Rt[None, :]
            agree = ((dx > 0) == (dt > 0)).double()
            mask = (dt != 0).double()
            w = p[:, None] * p[None, :] * mask
            return float((w * agree).sum() / w.sum().clamp_min(1e-300))


# ------------------------------------------------------------------ offline preferences
class FixedPreferenceLoss(PolicyLoss):
    """Bradley-Terry reward-model loss on a FIXED (offline) dataset of labelled segment pairs:
    ``L_RM(x; D_p) = -(1/n) sum_i [y_i log sigma(R_x(d^1_i) - R_x(d^2_i)) + (1 - y_i) log sigma(R_x(d^2_i) - R_x(d^1_i))]``
    with ``R_x(d) = sum_h r_x(s_h, a_h)`` (seed 002, slide "Extension": the ``L_RM(theta; D_p)``
    term of AIHF; Christiano et al. 2017, eq. 1; seed 004, eq. (2)).

    Unlike :class:`PreferenceLoss` the pairs do not come from ``pi*(x)``, so ``f`` depends on
    ``x`` only directly (``grad_pi f = 0``) and every hypergradient reduces to ``grad_x f``.

    Args:
        states, actions: int arrays of shape ``(n, 2, H)`` (pair ``i``, segment ``1``/``2``, step).
        labels: ``(n,)`` values in ``[0, 1]``, the probability that segment 1 is preferred.
    """

    def __init__(self, states, actions, labels) -> None:
        st, ac = np.asarray(states), np.asarray(actions)
        y = as_numpy(labels, "labels").reshape(-1)
        if st.ndim != 3 or st.shape[1] != 2 or st.shape != ac.shape:
            raise ValueError(f"states and actions must both have shape (n, 2, H), got {st.shape} and {ac.shape}")
        if st.shape[0] == 0:
            raise ValueError("states must hold at least one pair")
        if y.shape != (st.shape[0],):
            raise ValueError(f"labels must have shape ({st.shape[0]},), got {y.shape}")
        if not np.all(np.isfinite(y)) or np.any(y < 0) or np.any(y > 1):
            raise ValueError("labels must be probabilities in [0, 1]")
        self.states, self.actions, self.labels = st.astype(np.int64), ac.astype(np.int64), y
        self._s, self._a, self._y = torch.as_tensor(self.states), torch.as_tensor(self.actions), torch.as_tensor(y)

    def __len__(self) -> int:
        return self.states.shape[0]

    def validate(self, mdp: TabularMDP) -> None:
        if self.states.min() < 0 or self.states.max() >= mdp.n_states:
            raise ValueError(f"states must be integers in [0, {mdp.n_states})")
        if self.actions.min() < 0 or self.actions.max() >= mdp.n_actions:
            raise ValueError(f"actions must be integers in [0, {mdp.n_actions})")

    def value(self, mdp, x, pi):
        R = mdp.reward_fn.torch(x)[self._s, self._a].sum(-1)  # (n, 2)
        logit = R[:, 0] - R[:, 1]
        return (self._y * F.softplus(-logit) + (1.0 - self._y) * F.softplus(logit)).mean()

    def accuracy(self, mdp: TabularMDP, x) -> float:
        """Fraction of non-tied pairs whose predicted order matches the (rounded) label."""
        R = mdp.reward(x)[self.states, self.actions].sum(-1)
        keep = self.labels != 0.5
        if not keep.any():
            return float("nan")
        return float(np.mean((R[keep, 0] > R[keep, 1]) == (self.labels[keep] > 0.5)))

    @classmethod
    def sample(
        cls,
        mdp: TabularMDP,
        pi: np.ndarray,
        true_reward: np.ndarray,
        n_pairs: int,
        horizon: int,
        rng: np.random.Generator,
        beta: float = 1.0,
        start: Optional[np.ndarray] = None,
    ) -> "FixedPreferenceLoss":
        """Draw ``n_pairs`` pairs of segments from ``pi`` and binary labels from a Bradley-Terry
        teacher on ``true_reward``: ``P(y = 1) = sigma(beta (R_true(d^1) - R_true(d^2)))``."""
        if int(n_pairs) != n_pairs or n_pairs < 1:
            raise ValueError(f"n_pairs must be a positive integer, got {n_pairs!r}")
        if not beta > 0:
            raise ValueError(f"beta must be positive (or inf), got {beta!r}")
        st, ac = mdp.sample_trajectories(np.asarray(pi, dtype=np.float64), 2 * int(n_pairs), horizon, rng, start=start)
        st, ac = st.reshape(n_pairs, 2, horizon), ac.reshape(n_pairs, 2, horizon)
        R = np.asarray(true_reward, dtype=np.float64)[st, ac].sum(-1)
        diff = R[:, 0] - R[:, 1]
        p = (diff > 0) + 0.5 * (diff == 0) if np.isinf(beta) else 1.0 / (1.0 + np.exp(-beta * diff))
        y = (rng.random(n_pairs) < p).astype(np.float64)
        return cls(st, ac, y)


# ------------------------------------------------------------------ joint losses
class JointLoss(OuterLoss):
    """Weighted sum of outer losses ``f(x, pi) = sum_i w_i f_i(x, pi)``.

    With a demonstration and a preference part this is the joint objective of AIHF (seed 002,
    slide "Extension", Li, Zeng et al. ICLR 2025):

        min_x  L_SFT(x; D_d) + lambda * L_RM(x; D_p)   s.t.  pi_x = argmax_pi E_pi[r_x + H(pi)]

    where ``L_SFT = -E_{D_d}[log pi*_x(a|s)]`` is the ML-IRL demonstration loss
    (:class:`DemonstrationNLL`, seed 002 "BLO for Alignment", (ML-BLO)) and ``L_RM`` a
    Bradley-Terry preference loss (:class:`PreferenceLoss` on segments from ``pi*_x``, or
    :class:`FixedPreferenceLoss` on an offline dataset).  The slide has ``lambda = 1``.

    The hypergradient is linear in ``f``: ``grad phi = sum_i w_i grad phi_i``.
    :func:`birl.hypergrad.hypergradient` evaluates the joint loss at once for ``exact`` and
    ``msobirl`` and calls the chosen sampled estimator on each part (with the same policy)
    otherwise, so a method works on a joint loss whenever it works on every part.

    Args:
        parts: a sequence of :class:`OuterLoss`.
        weights: non-negative finite weights, one per part (default all 1); at least one > 0.
    """

    def __init__(self, parts, weights=None) -> None:
        parts = nonempty_list_of(parts, OuterLoss, "parts")
        w = np.ones(len(parts)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (len(parts),):
            raise ValueError(f"weights must have one entry per part ({len(parts)}), got shape {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
        if not np.any(w > 0):
            raise ValueError("weights must have at least one positive entry")
        self.parts, self.weights = parts, w

    @classmethod
    def demonstrations_and_preferences(cls, demonstrations: OuterLoss, preferences: OuterLoss, lam: float = 1.0) -> "JointLoss":
        """AIHF: ``L_demo + lam * L_pref`` (seed 002, slide "Extension"; ``lam >= 0``)."""
        if isinstance(lam, bool) or not np.isscalar(lam) or not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite non-negative number, got {lam!r}")
        return cls([demonstrations, preferences], [1.0, float(lam)])

    #: neither a policy nor a trajectory loss: sampled estimators are run part by part.
    kind = "joint"

    def validate(self, mdp: TabularMDP) -> None:
        for part in self.parts:
            part.validate(mdp)

    def value(self, mdp, x, pi):
        return sum(float(w) * part.value(mdp, x, pi) for w, part in zip(self.weights, self.parts) if w != 0)

    def __repr__(self) -> str:
        terms = " + ".join(f"{w:g} * {type(p).__name__}" for w, p in zip(self.weights, self.parts))
        return f"JointLoss({terms})"
