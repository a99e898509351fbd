"""Generative models as soft policies with the reward as outer variable (seed 001), case (a):
tabular classification.

Seed 001 trains a generative model as the solution of an entropy-regularised policy problem
against a *learned* reward ``r_x``, and chooses ``r_x`` so that the model fits the data.  For
classification the "policy" is the classifier ``pi_theta(y|s)`` and the problem has horizon 1
(``gamma = 0``):

    inner:  theta*(x) = argmax_theta  sum_s w(s) [ sum_y pi_theta(y|s) r_x(s, y) + tau H(pi_theta(.|s)) ]
    outer:  phi(x)    = -(1/n) sum_i log pi_{theta*(x)}(y_i | s_i)        (data NLL)

with ``w`` the empirical input distribution and ``x = r`` a free reward table ``(n_inputs, C)``.
The classifier is linear-softmax over input features ``Phi`` (``pi_theta(.|s) = softmax(Phi[s] theta)``);
``Phi = I`` is the tabular classifier, for which ``pi* = softmax(r / tau)`` and the bilevel problem
is plain cross-entropy on logits ``r / tau`` (a check).  With fewer features than inputs the inner
solution is the reverse-KL projection of ``softmax(r/tau)`` onto the class, and the outer level
steers it through the reward.

The hypergradient is approximate implicit differentiation (seed 003, "Approximate implicit
differentiation (AID)"), with ``G = -J`` the inner loss:

    grad phi(x) = grad_x f - grad^2_{x theta} G [grad^2_{theta theta} G]^{-1} grad_theta f .

:func:`fit_bilevel` and :func:`fit_cross_entropy` train the two ways on the same data and
:func:`evaluate` reports NLL and accuracy, so the comparison of seed 001 can be made.
Case (b) (a Pendulum dynamics model trained this way) is not implemented.  numpy + torch only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ClassificationData",
    "make_classification",
    "inner_objective",
    "solve_inner",
    "data_nll",
    "hypergradient",
    "fit_bilevel",
    "fit_cross_entropy",
    "evaluate",
]

_T = torch.float64


@dataclass
class ClassificationData:
    """Inputs are indices into a feature table; labels are classes.

    Attributes:
        features: ``(n_inputs, d)`` feature table ``Phi``.
        n_classes: number of classes ``C``.
        train_x, train_y, test_x, test_y: integer arrays.
        true_probs: ``(n_inputs, C)`` the generating conditional, if known.
    """

    features: np.ndarray
    n_classes: int
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    true_probs: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features, dtype=np.float64)
        if self.features.ndim != 2:
            raise ValueError(f"features must have shape (n_inputs, d), got {self.features.shape}")
        n = self.features.shape[0]
        for name in ("train_x", "test_x"):
            v = np.asarray(getattr(self, name))
            if v.size == 0 or v.min() < 0 or v.max() >= n:
                raise ValueError(f"{name} must be non-empty integers in [0, {n})")
        for name in ("train_y", "test_y"):
            v = np.asarray(getattr(self, name))
            if v.size == 0 or v.min() < 0 or v.max() >= self.n_classes:
                raise ValueError(f"{name} must be non-empty integers in [0, {self.n_classes})")

    @property
    def input_weights(self) -> np.ndarray:
        """Empirical distribution ``w(s)`` of the training inputs."""
        return np.bincount(self.train_x, minlength=self.features.shape[0]) / len(self.train_x)


def make_classification(n_inputs: int = 20, n_features: int = 3, n_classes: int = 4, n_train: int = 100,
                        n_test: int = 5000, seed: Optional[int] = 0, tabular: bool = False) -> ClassificationData:
    """Random problem: labels from a *non-linear* conditional ``softmax(2 tanh(Phi W) + noise)``, so a
    linear-softmax classifier is misspecified; ``tabular=True`` uses one-hot features."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((n_inputs, n_features))
    logits = 2.0 * np.tanh(phi @ rng.standard_normal((n_features, n_classes))) + 0.5 * rng.standard_normal((n_inputs, n_classes))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)

    def draw(n):
        x = rng.integers(0, n_inputs, n)
        u = rng.random(n)[:, None]
        return x, np.minimum((u > np.cumsum(probs[x], 1)).sum(1), n_classes - 1)

    (tx, ty), (vx, vy) = draw(n_train), draw(n_test)
    return ClassificationData(np.eye(n_inputs) if tabular else phi, n_classes, tx, ty, vx, vy, probs)


def inner_objective(theta: torch.Tensor, features: torch.Tensor, r: torch.Tensor, tau: float, w: torch.Tensor) -> torch.Tensor:
    """``J(theta; r) = sum_s w(s) [ E_{y ~ pi_theta} r(s, y) + tau H(pi_theta(.|s)) ]`` (horizon-1 soft RL)."""
    logp = torch.log_softmax(features @ theta, -1)
    return (w * (logp.exp() * (r - tau * logp)).sum(-1)).sum()


def data_nll(theta: torch.Tensor, features: torch.Tensor, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """Outer loss ``-(1/n) sum_i log pi_theta(y_i | x_i)``."""
    logp = torch.log_softmax(features[torch.as_tensor(x)] @ theta, -1)
    return -logp[torch.arange(len(y)), torch.as_tensor(y)].mean()


def _minimise(loss_fn, theta0: torch.Tensor, max_iter: int) -> torch.Tensor:
    theta = theta0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(theta)
        loss.backward()
        return loss

    opt.step(closure)
    return theta.detach()


def solve_inner(data: ClassificationData, r, tau: float, theta0: Optional[torch.Tensor] = None, max_iter: int = 200) -> torch.Tensor:
    """``theta*(r)`` by L-BFGS on ``-J`` (warm start ``theta0``)."""
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau!r}")
    Phi = torch.as_tensor(data.features, dtype=_T)
    r = torch.as_tensor(r, dtype=_T)
    if r.shape != (Phi.shape[0], data.n_classes):
        raise ValueError(f"r must have shape ({Phi.shape[0]}, {data.n_classes}), got {tuple(r.shape)}")
    w = torch.as_tensor(data.input_weights, dtype=_T)[:, None]
    theta0 = torch.zeros(Phi.shape[1], data.n_classes, dtype=_T) if theta0 is None else theta0
    return _minimise(lambda th: -inner_objective(th, Phi, r, tau, w), theta0, max_iter)


def hypergradient(data: ClassificationData, r, tau: float, theta: Optional[torch.Tensor] = None,
                  damping: float = 1e-8) -> Tuple[np.ndarray, float, torch.Tensor]:
    """AID hypergradient of ``phi(r)`` (module docstring).  Returns ``(grad [n_inputs, C], phi, theta*)``.

    ``theta`` warm-starts the inner solve.  The inner Hessian is singular along ``theta -> theta + c 1^T``
    (softmax shift); ``damping`` regularises it and the shift direction does not change ``pi``.
    """
    Phi = torch.as_tensor(data.features, dtype=_T)
    r = torch.as_tensor(r, dtype=_T).clone().requires_grad_(True)
    w = torch.as_tensor(data.input_weights, dtype=_T)[:, None]
    theta = solve_inner(data, r.detach(), tau, theta)
    th_ = theta.clone().requires_grad_(True)
    f = data_nll(th_, Phi, data.train_x, data.train_y)
    (g_theta,) = torch.autograd.grad(f, th_)
    G = lambda t: -inner_objective(t.reshape(theta.shape), Phi, r.detach(), tau, w)  # noqa: E731
    H = torch.autograd.functional.hessian(G, theta.reshape(-1), vectorize=True)
    v = torch.linalg.solve(H + damping * torch.eye(H.shape[0], dtype=_T), g_theta.reshape(-1))
    (grad_theta_G,) = torch.autograd.grad(-inner_objective(th_, Phi, r, tau, w), th_, create_graph=True)
    (cross,) = torch.autograd.grad((grad_theta_G.reshape(-1) * v).sum(), r)
    return (-cross).numpy(), float(f.detach()), theta


@dataclass
class FitHistory:
    """Training-NLL per outer step and the final classifier parameters."""

    train_nll: List[float] = field(default_factory=list)
    theta: Optional[torch.Tensor] = None
    r: Optional[np.ndarray] = None


def fit_bilevel(data: ClassificationData, tau: float = 1.0, outer_steps: int = 200, lr: float = 0.5,
                r0: Optional[np.ndarray] = None) -> FitHistory:
    """Outer gradient descent (Adam) on the reward table with the AID hypergradient; the inner
    classifier is re-solved from a warm start at every step."""
    r = torch.zeros(data.features.shape[0], data.n_classes, dtype=_T) if r0 is None else torch.as_tensor(r0, dtype=_T).clone()
    r.requires_grad_(True)
    opt = torch.optim.Adam([r], lr=lr)
    hist, theta = FitHistory(), None
    for _ in range(int(outer_steps)):
        g, f, theta = hypergradient(data, r.detach(), tau, theta)
        hist.train_nll.append(f)
        opt.zero_grad()
        r.grad = torch.as_tensor(g)
        opt.step()
    hist.theta, hist.r = solve_inner(data, r.detach(), tau, theta), r.detach().numpy()
    hist.train_nll.append(float(data_nll(hist.theta, torch.as_tensor(data.features, dtype=_T), data.train_x, data.train_y)))
    return hist


def fit_cross_entropy(data: ClassificationData, max_iter: int = 500) -> FitHistory:
    """Plain maximum likelihood of the same linear-softmax classifier (the baseline of seed 001)."""
    Phi = torch.as_tensor(data.features, dtype=_T)
    theta = _minimise(lambda th: data_nll(th, Phi, data.train_x, data.train_y), torch.zeros(Phi.shape[1], data.n_classes, dtype=_T), max_iter)
    return FitHistory([float(data_nll(theta, Phi, data.train_x, data.train_y))], theta)


def evaluate(data: ClassificationData, theta: torch.Tensor) -> Dict[str, float]:
    """Train/test NLL and accuracy of ``softmax(Phi theta)``."""
    Phi = torch.as_tensor(data.features, dtype=_T)
    out = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        with torch.no_grad():
            out[f"{split}_nll"] = float(data_nll(theta, Phi, x, y))
            out[f"{split}_acc"] = float(((Phi[torch.as_tensor(x)] @ theta).argmax(-1).numpy() == y).mean())
    return out
