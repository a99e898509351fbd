"""Synthetic preference teacher: a scripted Bradley-Terry oracle on the TRUE reward.

For a pair of segments with true rewards ``r^1, r^2`` (``[N, H]``) the teacher forms myopic
returns ``R^i = sum_t gamma^(H-1-t) r^i_t`` (``gamma < 1`` down-weights early steps) and answers

* ``beta = inf`` (perfectly rational): ``y = 1`` if ``R^1 > R^2``, ``0`` if ``R^1 < R^2``,
  ``0.5`` on an exact tie;
* ``beta < inf``: ``y ~ Bernoulli(sigmoid(beta * (R^1 - R^2)))``, the Bradley-Terry model
  ``P(d^1 > d^2) = exp(beta R^1) / (exp(beta R^1) + exp(beta R^2))`` (Christiano et al. 2017,
  eq. 1, with rationality ``beta``);

then flips each decisive label with probability ``eps_mistake``, sets ``y = 0.5`` where the
undiscounted returns are within ``equal_threshold`` of each other, and marks a pair as skipped
(``keep = False``) where the larger undiscounted return is at or below ``skip_threshold``
(``skip_threshold=None``: never skip).  This mirrors the scripted teachers of B-Pref (Lee et al.
2021); unlike B-Pref, ``y = 1`` here means the FIRST segment is preferred.

Labels are always computed from ``Segment.true_rewards``; ``learned_rewards`` is never read.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from birl.feedback.segments import Segment, SegmentBatch, as_batch

__all__ = ["SyntheticTeacher"]

SegmentsLike = Union[Segment, SegmentBatch, Sequence[Segment]]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


class SyntheticTeacher:
    """Scripted preference oracle on true rewards.

    Args:
        beta: rationality (inverse temperature) of the Bradley-Terry model; ``math.inf`` gives
            deterministic argmax labels, ``0`` gives fair coin flips.
        gamma: myopia discount in ``(0, 1]``; step ``t`` of ``H`` gets weight ``gamma^(H-1-t)``.
        eps_mistake: probability of flipping each decisive label (``[0, 1]``).
        skip_threshold: skip pairs whose larger (undiscounted) return is ``<=`` this value
            (B-Pref "skip"); ``None`` disables skipping.
        equal_threshold: label ``0.5`` when ``|R^1 - R^2| < equal_threshold`` (undiscounted
            returns, B-Pref "equal"); ``0`` disables it.
        seed: seed of the teacher's own ``numpy`` Generator (labels are reproducible).
    """

    def __init__(
        self,
        beta: float = math.inf,
        gamma: float = 1.0,
        eps_mistake: float = 0.0,
        skip_threshold: Optional[float] = None,
        equal_threshold: float = 0.0,
        seed: Optional[int] = None,
    ) -> None:
        if not (beta >= 0):  # also rejects NaN
            raise ValueError(f"beta must be >= 0 (or math.inf), got {beta!r}")
        if not (0 < gamma <= 1):
            raise ValueError(f"gamma must lie in (0, 1], got {gamma!r}")
        if not (0 <= eps_mistake <= 1):
            raise ValueError(f"eps_mistake must lie in [0, 1], got {eps_mistake!r}")
        if skip_threshold is not None and not math.isfinite(skip_threshold):
            raise ValueError(f"skip_threshold must be finite or None, got {skip_threshold!r}")
        if not (equal_threshold >= 0):
            raise ValueError(f"equal_threshold must be >= 0, got {equal_threshold!r}")
        self.beta, self.gamma, self.eps_mistake = float(beta), float(gamma), float(eps_mistake)
        self.skip_threshold = None if skip_threshold is None else float(skip_threshold)
        self.equal_threshold = float(equal_threshold)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __repr__(self) -> str:
        return (
            f"SyntheticTeacher(beta={self.beta}, gamma={self.gamma}, eps_mistake={self.eps_mistake}, "
            f"skip_threshold={self.skip_threshold}, equal_threshold={self.equal_threshold}, seed={self.seed})"
        )

    def reset(self, seed: Optional[int] = None) -> None:
        """Restart the random stream (from ``seed``, or the constructor's seed)."""
        self.rng = np.random.default_rng(self.seed if seed is None else seed)

    def preference_probability(self, rewards1: np.ndarray, rewards2: np.ndarray) -> np.ndarray:
        """``P(y = 1)`` before mistakes, ties and skips: ``sigmoid(beta (R^1 - R^2))`` (``[N]``)."""
        r1, r2 = self._check(rewards1, rewards2)
        diff = self._discounted(r1) - self._discounted(r2)
        if math.isinf(self.beta):
            return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
        return _sigmoid(self.beta * diff)

    def label(self, seg1: SegmentsLike, seg2: SegmentsLike) -> Tuple[np.ndarray, np.ndarray]:
        """Label pairs from their TRUE rewards.

        Args:
            seg1, seg2: a :class:`Segment`, a list of them or a :class:`SegmentBatch` (``N`` pairs).

        Returns:
            ``(labels, keep)``: float32 ``[N]`` in ``{0, 0.5, 1}`` (``1``: ``seg1`` preferred) and
            a bool ``[N]`` mask, ``False`` for skipped pairs (their label is meaningless).
        """
        b1, b2 = as_batch(seg1, "seg1"), as_batch(seg2, "seg2")
        return self.label_rewards(b1.true_rewards, b2.true_rewards)

    def label_rewards(self, rewards1: np.ndarray, rewards2: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """:meth:`label` on true reward arrays ``[N, H]`` directly."""
        r1, r2 = self._check(rewards1, rewards2)
        n = r1.shape[0]
        p = self.preference_probability(r1, r2)
        # Draw every random number, whatever the options, so streams stay aligned across settings.
        u_label, u_mistake = self.rng.random(n), self.rng.random(n)
        if math.isinf(self.beta):
            labels = p.copy()
        else:
            labels = (u_label < p).astype(np.float64)
        flip = (u_mistake < self.eps_mistake) & (labels != 0.5)
        labels[flip] = 1.0 - labels[flip]
        ret1, ret2 = r1.sum(1), r2.sum(1)
        labels[np.abs(ret1 - ret2) < self.equal_threshold] = 0.5
        keep = np.ones(n, dtype=bool)
        if self.skip_threshold is not None:
            keep = np.maximum(ret1, ret2) > self.skip_threshold
        return labels.astype(np.float32), keep

    def _discounted(self, r: np.ndarray) -> np.ndarray:
        h = r.shape[1]
        return r @ (self.gamma ** np.arange(h - 1, -1, -1, dtype=np.float64))

    @staticmethod
    def _check(rewards1: np.ndarray, rewards2: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        r1 = np.asarray(rewards1, dtype=np.float64)
        r2 = np.asarray(rewards2, dtype=np.float64)
        if r1.ndim == 1:
            r1 = r1[None]
        if r2.ndim == 1:
            r2 = r2[None]
        if r1.ndim != 2:
            raise ValueError(f"rewards1 must have shape [N, H], got {r1.shape}")
        if r2.ndim != 2:
            raise ValueError(f"rewards2 must have shape [N, H], got {r2.shape}")
        if r1.shape[0] != r2.shape[0]:
            raise ValueError(f"seg1 and seg2 must hold the same number of segments, got {r1.shape[0]} and {r2.shape[0]}")
        if not (np.all(np.isfinite(r1)) and np.all(np.isfinite(r2))):
            raise ValueError("true rewards contain NaN or inf")
        return r1, r2
