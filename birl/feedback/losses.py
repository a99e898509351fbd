"""Outer losses on feedback data for deep reward models (torch).

* :func:`bradley_terry_nll`: preference NLL on predicted segment returns (Christiano et al. 2017,
  eq. 1; DESIGN.md section 1, "preference loss").
* :func:`demonstration_nll`: ML-IRL demonstration NLL ``-E_D[sum_h log pi(a_h | s_h)]``
  (DESIGN.md section 1, "demonstration loss"; seed 002).
* :func:`preference_accuracy`: how often the predicted order matches the label.
* :func:`segment_returns`: ``R(d) = sum_h r(s_h, a_h[, s_{h+1}])`` from a reward model.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from birl.feedback.segments import SegmentBatch

__all__ = ["segment_returns", "bradley_terry_nll", "demonstration_nll", "preference_accuracy"]

TensorLike = Union[torch.Tensor, np.ndarray]


def _t(x: Any, name: str, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device or x.device, dtype=dtype or x.dtype)
    try:
        return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor or numeric array, got {type(x).__name__}") from err


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def segment_returns(
    model: torch.nn.Module,
    obs: Union[TensorLike, SegmentBatch],
    acts: Optional[TensorLike] = None,
    next_obs: Optional[TensorLike] = None,
    *,
    absorbing: Optional[TensorLike] = None,
    per_member: bool = False,
) -> torch.Tensor:
    """Predicted returns ``R(d_i) = sum_h r(s_ih, a_ih[, s_i,h+1])`` of ``N`` segments.

    Absorbing steps (after a termination; :mod:`birl.feedback.segments`) have reward 0, the DAC
    normalisation ``r(absorbing) = 0`` (Kostrikov et al. 2019, section 4.2).

    Args:
        model: a reward model (``forward(obs [B, ...], act [B, ...], next_obs) -> [B]``).
        obs: ``[N, H, *obs_shape]``, or a :class:`SegmentBatch` (then ``acts``/``next_obs`` come
            from it).
        acts: ``[N, H, *act_shape]``.
        next_obs: ``[N, H, *obs_shape]`` or ``None``.
        absorbing: optional bool ``[N, H]`` (default: the batch's own mask, else no absorbing step).
        per_member: for a :class:`birl.reward_models.RewardEnsemble`, return ``[M, N]``
            member returns instead of the mean ``[N]``.

    Gradients flow to the model's parameters.
    """
    if isinstance(obs, SegmentBatch):
        absorbing = obs.absorbing if absorbing is None else absorbing
        obs, acts, next_obs = obs.obs, obs.acts, obs.next_obs if next_obs is None else next_obs
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = None
    o, a = _t(obs, "obs", device), (None if acts is None else _t(acts, "acts", device))
    if o.ndim < 2:
        raise ValueError(f"obs must have shape [N, H, ...], got {tuple(o.shape)}")
    n, h = o.shape[:2]
    if a is not None and tuple(a.shape[:2]) != (n, h):
        raise ValueError(f"acts must have leading shape ({n}, {h}) like obs, got {tuple(a.shape)}")
    flat = lambda x: x.reshape((n * h,) + tuple(x.shape[2:]))  # noqa: E731
    nxt = None
    if next_obs is not None:
        nxt = _t(next_obs, "next_obs", device)
        if nxt.shape != o.shape:
            raise ValueError(f"next_obs must have the shape of obs {tuple(o.shape)}, got {tuple(nxt.shape)}")
        nxt = flat(nxt)
    args = (flat(o), None if a is None else flat(a), nxt)
    mask = None
    if absorbing is not None:
        mask = _t(absorbing, "absorbing", device).bool()
        if tuple(mask.shape) != (n, h):
            raise ValueError(f"absorbing must have shape ({n}, {h}), got {tuple(mask.shape)}")
    if per_member:
        if not hasattr(model, "members"):
            raise TypeError(f"per_member=True needs an ensemble with .members(), got {type(model).__name__}")
        r = model.members(*args)  # [M, N*H]
        r = r.reshape(r.shape[0], n, h)
    else:
        r = model(*args).reshape(n, h)
    return (r if mask is None else r.masked_fill(mask, 0.0)).sum(-1)


def bradley_terry_nll(
    returns1: TensorLike,
    returns2: TensorLike,
    labels: TensorLike,
    label_smoothing: float = 0.0,
    weights: Optional[TensorLike] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood of preference labels (Christiano et al. 2017, eq. 1).

    ``P(d^1 > d^2) = exp R(d^1) / (exp R(d^1) + exp R(d^2)) = sigmoid(R^1 - R^2)`` and

        ``l = -[y' log sigmoid(R^1 - R^2) + (1 - y') log sigmoid(R^2 - R^1)]``,

    with the smoothed label ``y' = (1 - label_smoothing) y + label_smoothing / 2``.  A label
    ``y = 0.5`` ("equally preferable") is a soft target, pulling ``R^1 - R^2`` towards 0.

    Args:
        returns1, returns2: predicted segment returns ``[N]`` (differentiable).
        labels: ``[N]`` in ``[0, 1]`` (``1``: segment 1 preferred).
        label_smoothing: in ``[0, 1)``; bounds the loss's pull on confidently ordered pairs.
        weights: optional per-pair weights ``[N]``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    r1 = _t(returns1, "returns1")
    r2 = _t(returns2, "returns2", r1.device)
    if not r1.dtype.is_floating_point:
        raise TypeError(f"returns1 must be floating point, got {r1.dtype}")
    if r1.ndim != 1 or r1.shape != r2.shape:
        raise ValueError(f"returns1 and returns2 must both have shape [N], got {tuple(r1.shape)} and {tuple(r2.shape)}")
    y = _t(labels, "labels", r1.device, r1.dtype)
    if y.shape != r1.shape:
        raise ValueError(f"labels must have shape {tuple(r1.shape)}, got {tuple(y.shape)}")
    if y.numel() and (bool((y < 0).any()) or bool((y > 1).any()) or bool(torch.isnan(y).any())):
        raise ValueError("labels must lie in [0, 1]")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    y = (1.0 - label_smoothing) * y + 0.5 * label_smoothing
    loss = F.binary_cross_entropy_with_logits(r1 - r2, y, reduction="none")
    if weights is not None:
        w = _t(weights, "weights", r1.device, r1.dtype)
        if w.shape != r1.shape:
            raise ValueError(f"weights must have shape {tuple(r1.shape)}, got {tuple(w.shape)}")
        loss = loss * w
    return _reduce(loss, reduction)


def demonstration_nll(log_probs: TensorLike, mask: Optional[TensorLike] = None, reduction: str = "mean") -> torch.Tensor:
    """ML-IRL demonstration NLL ``-E_D[sum_h log pi(a_h | s_h)]`` (DESIGN.md section 1, seed 002).

    Args:
        log_probs: ``log pi(a_h | s_h)`` of the demonstrated actions, either ``[N, H]`` (``N``
            trajectories; summed over ``h``, averaged over trajectories) or ``[N]`` (flat
            transitions; the per-transition mean, i.e. the objective divided by the horizon).
        mask: optional ``[N, H]`` validity mask for padded trajectories (2-D input only).
        reduction: ``"mean"`` over trajectories (or transitions), ``"sum"`` or ``"none"``.
    """
    lp = _t(log_probs, "log_probs")
    if not lp.dtype.is_floating_point:
        raise TypeError(f"log_probs must be floating point, got {lp.dtype}")
    if lp.ndim == 1:
        if mask is not None:
            raise ValueError("mask is only supported with log_probs of shape [N, H]")
        return _reduce(-lp, reduction)
    if lp.ndim != 2:
        raise ValueError(f"log_probs must have shape [N] or [N, H], got {tuple(lp.shape)}")
    if mask is not None:
        m = _t(mask, "mask", lp.device)
        if m.shape != lp.shape:
            raise ValueError(f"mask must have shape {tuple(lp.shape)}, got {tuple(m.shape)}")
        lp = torch.where(m.bool(), lp, torch.zeros_like(lp))
    return _reduce(-lp.sum(1), reduction)


@torch.no_grad()
def preference_accuracy(returns1: TensorLike, returns2: TensorLike, labels: TensorLike, tie_tolerance: Optional[float] = None) -> float:
    """Fraction of pairs whose predicted order matches the label.

    A decisive label (``0`` or ``1``) is correct when ``R^1 > R^2`` for ``y = 1`` and
    ``R^1 < R^2`` for ``y = 0`` (a predicted exact tie counts as wrong).

    Labels of ``0.5``:

    * ``tie_tolerance=None`` (default): ignored; accuracy is over decisive labels only;
    * ``tie_tolerance=t``: counted, and correct when ``|sigmoid(R^1 - R^2) - 0.5| <= t``.

    Returns ``nan`` when no pair is counted.
    """
    r1, r2 = _t(returns1, "returns1").double(), _t(returns2, "returns2").double()
    y = _t(labels, "labels").double().to(r1.device)
    r2 = r2.to(r1.device)
    if not (r1.shape == r2.shape == y.shape) or r1.ndim != 1:
        raise ValueError(f"returns1, returns2 and labels must all have shape [N], got {tuple(r1.shape)}, {tuple(r2.shape)}, {tuple(y.shape)}")
    if tie_tolerance is not None and not 0 <= tie_tolerance <= 0.5:
        raise ValueError(f"tie_tolerance must lie in [0, 0.5] or be None, got {tie_tolerance}")
    diff = r1 - r2
    decisive = y != 0.5
    correct = torch.where(y == 1, diff > 0, diff < 0) & decisive
    counted = decisive.clone()
    if tie_tolerance is not None:
        tie_ok = (torch.sigmoid(diff) - 0.5).abs() <= tie_tolerance
        correct |= ~decisive & tie_ok
        counted |= ~decisive
    n = int(counted.sum())
    return float("nan") if n == 0 else float(correct.sum()) / n
