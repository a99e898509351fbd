"""Query selection (which candidate pairs to ask about) and query schedules (how many, when).

Selection.  Given ``m`` candidate pairs, pick ``k``:

* :func:`select_uniform`: ``k`` distinct pairs uniformly at random;
* :func:`select_disagreement`: the ``k`` pairs with the largest ensemble standard deviation of the
  predicted preference probability ``p_j = sigmoid(R_j(d^1) - R_j(d^2))`` over members ``j``
  (PEBBLE / B-Pref "disagreement");
* :func:`select_entropy`: the ``k`` pairs with the largest binary entropy
  ``H(p) = -p log p - (1 - p) log(1 - p)`` of the (member-averaged) predicted probability.

Scores come from predicted segment returns ``[M, m]`` (``M`` ensemble members; ``[m]`` for one
model); :func:`birl.feedback.losses.segment_returns` computes them from a reward model.

Schedules.  A schedule maps a training step (env step or feedback round, the caller's choice)
to a cumulative target number of queries; ``schedule(step, asked)`` returns how many to ask now.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

__all__ = [
    "preference_probabilities",
    "select_uniform",
    "select_disagreement",
    "select_entropy",
    "select_queries",
    "QuerySchedule",
    "ConstantSchedule",
    "HyperbolicSchedule",
    "BudgetedSchedule",
    "make_schedule",
]


def _np(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _check_k(k: int, m: int) -> int:
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if k > m:
        raise ValueError(f"k={k} exceeds the number of candidates m={m}")
    return int(k)


def preference_probabilities(returns1, returns2) -> np.ndarray:
    """``sigmoid(R(d^1) - R(d^2))`` elementwise, shape ``[M, m]`` (a ``[m]`` input gets ``M = 1``)."""
    r1, r2 = _np(returns1, "returns1"), _np(returns2, "returns2")
    if r1.shape != r2.shape:
        raise ValueError(f"returns1 and returns2 must have the same shape, got {r1.shape} and {r2.shape}")
    if r1.ndim == 1:
        r1, r2 = r1[None], r2[None]
    if r1.ndim != 2:
        raise ValueError(f"returns must have shape [M, m] or [m], got {r1.shape}")
    return 0.5 * (1.0 + np.tanh(0.5 * (r1 - r2)))


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-score, kind="stable")[:k]


def select_uniform(m: int, k: int, rng: Union[np.random.Generator, int, None] = None) -> np.ndarray:
    """``k`` distinct indices out of ``m``, uniformly at random."""
    if not isinstance(m, (int, np.integer)) or m < 0:
        raise ValueError(f"m must be a non-negative int, got {m!r}")
    k = _check_k(k, m)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    return rng.choice(m, size=k, replace=False)


def select_disagreement(returns1, returns2, k: int) -> np.ndarray:
    """Indices of the ``k`` pairs with the largest member std of ``sigmoid(R^1 - R^2)``.

    Args:
        returns1, returns2: predicted segment returns ``[M, m]`` from ``M >= 2`` members.
    """
    p = preference_probabilities(returns1, returns2)
    if p.shape[0] < 2:
        raise ValueError(f"disagreement needs at least 2 ensemble members, returns have M={p.shape[0]}")
    return _top_k(p.std(0), _check_k(k, p.shape[1]))


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """``-p log p - (1-p) log(1-p)`` in nats (0 at ``p`` in ``{0, 1}``)."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def select_entropy(returns1, returns2, k: int) -> np.ndarray:
    """Indices of the ``k`` pairs with the largest entropy of the member-mean ``sigmoid(R^1 - R^2)``."""
    p = preference_probabilities(returns1, returns2).mean(0)
    return _top_k(binary_entropy(p), _check_k(k, p.shape[0]))


def select_queries(
    method: str, k: int, returns1=None, returns2=None, rng: Union[np.random.Generator, int, None] = None, m: Optional[int] = None
) -> np.ndarray:
    """Dispatch on ``method`` in ``{"uniform", "disagreement", "entropy"}``.

    ``uniform`` needs ``m`` (or ``returns1`` to read it from); the others need both returns.
    """
    if method == "uniform":
        if m is None:
            if returns1 is None:
                raise ValueError("uniform selection needs m or returns1")
            m = int(np.shape(returns1)[-1])
        return select_uniform(m, k, rng)
    if returns1 is None or returns2 is None:
        raise ValueError(f"{method!r} selection needs returns1 and returns2")
    if method == "disagreement":
        return select_disagreement(returns1, returns2, k)
    if method == "entropy":
        return select_entropy(returns1, returns2, k)
    raise ValueError(f"method must be 'uniform', 'disagreement' or 'entropy', got {method!r}")


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


class QuerySchedule:
    """Base class: :meth:`cumulative` is the number of queries due by the end of ``step``."""

    def cumulative(self, step: int) -> int:
        raise NotImplementedError

    def __call__(self, step: int, asked: Optional[int] = None) -> int:
        """Queries to ask at ``step``.

        With ``asked`` (the number asked so far) the answer catches up on any shortfall:
        ``max(0, cumulative(step) - asked)``; this is robust to irregular calls.  Without it, the
        increment ``cumulative(step) - cumulative(step - 1)``.
        """
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        if asked is None:
            return self.cumulative(step) - (self.cumulative(step - 1) if step > 0 else 0)
        if asked < 0:
            raise ValueError(f"asked must be >= 0, got {asked}")
        return max(0, self.cumulative(step) - int(asked))


class ConstantSchedule(QuerySchedule):
    """``per_step`` queries at every step: ``cumulative(t) = per_step * (t + 1)``."""

    def __init__(self, per_step: int) -> None:
        if not isinstance(per_step, (int, np.integer)) or per_step < 0:
            raise ValueError(f"per_step must be a non-negative int, got {per_step!r}")
        self.per_step = int(per_step)

    def cumulative(self, step: int) -> int:
        return self.per_step * (int(step) + 1)


class HyperbolicSchedule(QuerySchedule):
    """Decreasing rate ``initial / (1 + decay * t)`` at step ``t`` (the query rate of
    :mod:`imitation`-style preference comparisons, front-loading feedback).

    ``cumulative(t) = floor(sum_{i<=t} initial / (1 + decay * i))``, so fractional parts carry over.
    """

    def __init__(self, initial: float, decay: float = 1.0) -> None:
        if not (initial >= 0 and math.isfinite(initial)):
            raise ValueError(f"initial must be finite and >= 0, got {initial!r}")
        if not (decay >= 0 and math.isfinite(decay)):
            raise ValueError(f"decay must be finite and >= 0, got {decay!r}")
        self.initial, self.decay = float(initial), float(decay)

    def cumulative(self, step: int) -> int:
        i = np.arange(int(step) + 1, dtype=np.float64)
        return int(math.floor(float(np.sum(self.initial / (1.0 + self.decay * i))) + 1e-9))


class BudgetedSchedule(QuerySchedule):
    """Spread ``budget`` queries over ``total_steps``; never exceeds the budget.

    ``cumulative(t) = floor(budget * (f0 + (1 - f0) * g(min(t, T) / T)))`` with ``f0 =
    initial_fraction`` asked at step 0 and ``g(u) = u`` (``decay = 0``, uniform) or
    ``g(u) = log(1 + decay u) / log(1 + decay)`` (front-loaded, hyperbolic rate).
    """

    def __init__(self, budget: int, total_steps: int, initial_fraction: float = 0.0, decay: float = 0.0) -> None:
        if not isinstance(budget, (int, np.integer)) or budget < 0:
            raise ValueError(f"budget must be a non-negative int, got {budget!r}")
        if not isinstance(total_steps, (int, np.integer)) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if not 0 <= initial_fraction <= 1:
            raise ValueError(f"initial_fraction must lie in [0, 1], got {initial_fraction!r}")
        if not (decay >= 0 and math.isfinite(decay)):
            raise ValueError(f"decay must be finite and >= 0, got {decay!r}")
        self.budget, self.total_steps = int(budget), int(total_steps)
        self.initial_fraction, self.decay = float(initial_fraction), float(decay)

    def cumulative(self, step: int) -> int:
        u = min(int(step), self.total_steps) / self.total_steps
        g = u if self.decay == 0 else math.log1p(self.decay * u) / math.log1p(self.decay)
        frac = self.initial_fraction + (1.0 - self.initial_fraction) * g
        return min(self.budget, int(math.floor(self.budget * frac + 1e-9)))


def make_schedule(name: str, **kwargs) -> QuerySchedule:
    """``make_schedule("constant", per_step=10)``, ``"hyperbolic"`` or ``"budgeted"``."""
    table = {"constant": ConstantSchedule, "hyperbolic": HyperbolicSchedule, "budgeted": BudgetedSchedule}
    if name not in table:
        raise ValueError(f"name must be one of {sorted(table)}, got {name!r}")
    return table[name](**kwargs)
