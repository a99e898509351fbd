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
Case (b), a continuous dynamics model trained this way (:class:`SoftWorldModel`), is at the end of
this module; its horizon-1 hypergradient needs no Hessian (see there).  numpy + torch only.
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
    "horizon1_surrogate",
    "SoftWorldModelConfig",
    "SoftFitResult",
    "SoftWorldModel",
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


# ============================================================================================
# Case (b): a continuous dynamics model as a horizon-1 soft policy over next states (seed 001)
# ============================================================================================
#
# The world model ``p_theta(s'|s, a)`` is the *policy* of a horizon-1 soft problem whose "action"
# is the next state and whose reward ``r_x(s, a, s')`` is the outer variable (seed 001, "reward
# function treated as the optimization variable of an outer-level problem"; DESIGN.md section 1,
# third outer loss):
#
#     inner:  p*_x(.|s, a) = argmax_p  E_{s' ~ p}[ r_x(s, a, s') ] + tau H(p(.|s, a))
#                          = exp(r_x(s, a, .) / tau) / Z_x(s, a)                        (1)
#     outer:  phi(x)       = -E_data[ log p*_x(s'|s, a) ]                               (2)
#
# This is DESIGN.md section 1 with gamma = 0: Q*(s, a, s') = r_x(s, a, s') and
# V*(s, a) = tau log Z_x(s, a), so grad_x log p*_x = (grad Q* - grad V*) / tau with
# grad V* = E_{p*}[grad_x r_x] (envelope theorem).  Hence the hypergradient is first order:
#
#     grad_x phi = -(1/tau) ( E_data[ grad_x r_x(s, a, s'_data) ] - E_{(s,a)~data} E_{s'~p*}[ grad_x r_x(s, a, s') ] )   (3)
#
# In the continuous model p* is replaced by the sampler p_theta (the approximately solved inner
# level, as SAC replaces pi* in SoBiRL), and the expectation by ``n_samples`` draws.
# :func:`horizon1_surrogate` is a scalar whose autograd gradient in ``x`` is (3).


def horizon1_surrogate(r_data: torch.Tensor, r_model: torch.Tensor, tau: float,
                       model_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scalar whose gradient in the reward parameters is the horizon-1 hypergradient (3).

    ``-(1/tau) ( mean_i r_data[i] - mean_i sum_k w[i, k] r_model[i, k] )`` with ``w`` detached.

    Args:
        r_data: ``[B]`` rewards ``r_x(s_i, a_i, s'_i)`` of the data transitions.
        r_model: ``[B, K]`` rewards of next states from the inner solution for the same ``(s_i, a_i)``:
            ``K`` samples of ``p_theta`` (then ``model_weights=None``: uniform ``1/K``), or a grid of
            next states with ``model_weights[i, k] = p*(s'_k|s_i, a_i)`` (an exact expectation).
        tau: entropy temperature (> 0).
        model_weights: optional ``[B, K]`` probabilities along the last axis.
    """
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau!r}")
    if r_data.ndim != 1 or r_model.ndim != 2 or r_model.shape[0] != r_data.shape[0]:
        raise ValueError(f"r_data must be [B] and r_model [B, K] with the same B, got {tuple(r_data.shape)} and {tuple(r_model.shape)}")
    if model_weights is None:
        expected = r_model.mean(-1)
    else:
        if model_weights.shape != r_model.shape:
            raise ValueError(f"model_weights must have the shape of r_model {tuple(r_model.shape)}, got {tuple(model_weights.shape)}")
        expected = (model_weights.detach() * r_model).sum(-1)
    return -(r_data.mean() - expected.mean()) / tau


def _soft_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Smoothly keep ``x`` inside ``(lo, hi)`` (identity well inside the bounds)."""
    x = hi - F.softplus(hi - x)
    return lo + F.softplus(x - lo)


_WM_ACTIVATIONS = {"relu": torch.nn.ReLU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh, "elu": torch.nn.ELU}


def _mlp(d_in: int, hidden: Tuple[int, ...], d_out: int, activation: str) -> torch.nn.Sequential:
    layers: List[torch.nn.Module] = []
    for i, o in zip((d_in, *hidden[:-1]), hidden):
        layers += [torch.nn.Linear(i, o), _WM_ACTIVATIONS[activation]()]
    layers.append(torch.nn.Linear(hidden[-1], d_out))
    return torch.nn.Sequential(*layers)


def _pos_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass
class SoftWorldModelConfig:
    """Constructor arguments of :class:`SoftWorldModel` (stored with its weights).

    Attributes:
        obs_dim, act_dim: flat observation and action widths.
        tau: entropy temperature of the inner problem (1).  ``tau`` and the scale of ``r_x`` are
            redundant (only ``r_x / tau`` matters at the optimum); ``tau`` scales the hypergradient.
        hidden: hidden widths of each of the three MLPs (reward centre/precision, reward residual,
            sampler).
        activation: ``relu``, ``silu``, ``tanh`` or ``elu``.
        residual_scale: bound ``B`` of the non-quadratic reward term ``B tanh(h_x)``; ``0`` makes
            ``r_x`` a pure quadratic (then ``p*`` is Gaussian, inside the sampler's family).
        min_log_precision, max_log_precision: soft bounds of the reward's log precisions ``c``
            (standardised units).
        min_log_std, max_log_std: soft bounds of the sampler's ``log sigma`` (standardised units).
    """

    obs_dim: int
    act_dim: int
    tau: float = 1.0
    hidden: Tuple[int, ...] = (200, 200)
    activation: str = "silu"
    residual_scale: float = 1.0
    min_log_precision: float = -5.0
    max_log_precision: float = 10.0
    min_log_std: float = -5.0
    max_log_std: float = 1.0

    def __post_init__(self) -> None:
        self.obs_dim = _pos_int("obs_dim", self.obs_dim)
        if isinstance(self.act_dim, bool) or not isinstance(self.act_dim, (int, np.integer)) or self.act_dim < 0:
            raise ValueError(f"act_dim must be an integer >= 0, got {self.act_dim!r}")
        self.act_dim = int(self.act_dim)
        if not (isinstance(self.tau, (int, float)) and np.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"tau must be a positive finite number, got {self.tau!r}")
        self.tau = float(self.tau)
        self.hidden = tuple(_pos_int("hidden", h) for h in self.hidden)
        if not self.hidden:
            raise ValueError("hidden must contain at least one layer width")
        if self.activation not in _WM_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_WM_ACTIVATIONS)}, got {self.activation!r}")
        if not (np.isfinite(self.residual_scale) and self.residual_scale >= 0):
            raise ValueError(f"residual_scale must be a finite number >= 0, got {self.residual_scale!r}")
        if not self.min_log_precision < self.max_log_precision:
            raise ValueError(f"min_log_precision must be < max_log_precision, got {self.min_log_precision} and {self.max_log_precision}")
        if not self.min_log_std < self.max_log_std:
            raise ValueError(f"min_log_std must be < max_log_std, got {self.min_log_std} and {self.max_log_std}")


@dataclass
class SoftFitResult:
    """What :meth:`SoftWorldModel.fit` did (one entry per evaluation, every ``eval_every`` iterations).

    Attributes:
        iterations: iteration index of each evaluation.
        outer_loss: mean surrogate (3) since the previous evaluation (its gradient is the hypergradient).
        inner_objective: mean ``E_{p_theta}[r_x] + tau H(p_theta)`` since the previous evaluation.
        train_nll: sampler NLL ``-log p_theta(s'|s,a)`` on a fixed probe batch of the training data.
        val_nll, val_mse: sampler NLL and mean-prediction MSE on ``val_data`` (empty without it).
    """

    iterations: List[int] = field(default_factory=list)
    outer_loss: List[float] = field(default_factory=list)
    inner_objective: List[float] = field(default_factory=list)
    train_nll: List[float] = field(default_factory=list)
    val_nll: List[float] = field(default_factory=list)
    val_mse: List[float] = field(default_factory=list)


class SoftWorldModel(torch.nn.Module):
    """Dynamics model ``p_theta(s'|s, a)`` trained as a horizon-1 soft policy against a learned
    reward ``r_x(s, a, s')`` (seed 001; equations (1)-(3) above).

    All three networks work in standardised units: ``u`` = standardised ``(s, a)``, ``z`` =
    standardised state change ``(s' - s - mean) / std``.

    * Reward (outer variable ``x``)::

          r_x(s, a, s') = -1/2 sum_j exp(c_j(u)) (z_j - m_j(u))^2  +  B tanh(h_x(u, z))

      ``(m, c)`` from one MLP over ``u``, ``h_x`` an MLP over ``(u, z)``.  The quadratic part makes
      ``exp(r_x / tau)`` integrable, so ``p*`` in (1) exists for every ``x`` (a plain MLP reward
      need not be); it is also the quadratic reward family of seed 001's Gaussian analysis.  The
      bounded residual lets ``p*`` be non-Gaussian; ``B = 0`` switches it off.
    * Sampler (inner variable ``theta``): a diagonal Gaussian MLP ``N(mu(u), diag sigma(u)^2)``
      over ``z``, trained like SAC's actor by the reparameterised inner objective
      ``E_{eps}[r_x(u, mu + sigma eps)] + tau H`` with the Gaussian entropy in closed form.
    * :meth:`fit` alternates ``inner_steps`` sampler steps and one reward step along (3) with
      ``n_samples`` draws of ``p_theta`` per data transition.  The sampler is the deployed model
      (:meth:`sample`, :meth:`predict`, :meth:`log_prob`); :meth:`energy_log_prob` estimates
      ``log p*_x`` itself (importance sampling from the quadratic part; exact for ``B = 0``).

    Caveat: with ``B > 0`` the Gaussian sampler is only the reverse-KL projection of ``p*``, and (3)
    is the gradient of the NLL of ``p*``, not of that projection (part (a) has the same gap).

    Example::

        model = SoftWorldModel(SoftWorldModelConfig(obs_dim=3, act_dim=1))
        history = model.fit(obs, act, next_obs, iterations=5000)
        next_obs = model.sample(torch.as_tensor(obs), torch.as_tensor(act))
    """

    def __init__(self, config: SoftWorldModelConfig) -> None:
        super().__init__()
        if not isinstance(config, SoftWorldModelConfig):
            raise TypeError(f"config must be a SoftWorldModelConfig, got {type(config).__name__}")
        self.config = config
        d, du = config.obs_dim, config.obs_dim + config.act_dim
        self.centre = _mlp(du, config.hidden, 2 * d, config.activation)  # (m, raw c)
        self.residual = _mlp(du + d, config.hidden, 1, config.activation)  # h_x
        self.sampler = _mlp(du, config.hidden, 2 * d, config.activation)  # (mu, raw log sigma)
        for net in (self.centre, self.sampler):  # start from m = mu ~ 0 and c = log sigma ~ 0
            torch.nn.init.zeros_(net[-1].bias)
            net[-1].weight.data.mul_(0.1)
        self.register_buffer("in_mean", torch.zeros(du))
        self.register_buffer("in_std", torch.ones(du))
        self.register_buffer("out_mean", torch.zeros(d))
        self.register_buffer("out_std", torch.ones(d))

    # ------------------------------------------------------------------ parameters
    def reward_parameters(self) -> List[torch.nn.Parameter]:
        """The outer variable ``x``."""
        return [*self.centre.parameters(), *self.residual.parameters()]

    def sampler_parameters(self) -> List[torch.nn.Parameter]:
        """The inner variable ``theta``."""
        return list(self.sampler.parameters())

    @property
    def tau(self) -> float:
        return self.config.tau

    # ------------------------------------------------------------------ standardisation
    def _check(self, name: str, x, dim: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have shape [B, {dim}], got {tuple(x.shape)}")
        return x.to(self.in_mean.dtype)

    def _context(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        obs = self._check("obs", obs, self.config.obs_dim)
        act = self._check("act", act.reshape(act.shape[0], -1) if isinstance(act, torch.Tensor) and act.ndim == 1 else act, self.config.act_dim)
        if obs.shape[0] != act.shape[0]:
            raise ValueError(f"obs and act have different batch sizes: {obs.shape[0]} vs {act.shape[0]}")
        return (torch.cat([obs, act], -1) - self.in_mean) / self.in_std

    def _z(self, obs: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        next_obs = self._check("next_obs", next_obs, self.config.obs_dim)
        if next_obs.shape[0] != obs.shape[0]:
            raise ValueError(f"obs and next_obs have different batch sizes: {obs.shape[0]} vs {next_obs.shape[0]}")
        return (next_obs - obs.to(next_obs.dtype) - self.out_mean) / self.out_std

    @torch.no_grad()
    def set_normalizer(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> None:
        """Standardise ``(s, a)`` and ``s' - s`` with the moments of the training data."""
        x = torch.cat([obs, act], -1).to(self.in_mean.dtype)
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
        delta = (next_obs - obs).to(self.out_std.dtype)
        self.out_mean.copy_(delta.mean(0))
        self.out_std.copy_(delta.std(0, unbiased=False).clamp_min(1e-6))

    # ------------------------------------------------------------------ the two levels
    def _reward_z(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``r_x`` in standardised units; ``u [B, du]``, ``z [B, d]`` or ``[B, K, d]`` -> ``[B]`` / ``[B, K]``."""
        cfg = self.config
        m, c = self.centre(u).chunk(2, -1)
        c = _soft_clamp(c, cfg.min_log_precision, cfg.max_log_precision)
        if z.ndim == 3:
            m, c, uu = m[:, None], c[:, None], u[:, None].expand(-1, z.shape[1], -1)
        else:
            uu = u
        r = -0.5 * (torch.exp(c) * (z - m) ** 2).sum(-1)
        if cfg.residual_scale > 0:
            r = r + cfg.residual_scale * torch.tanh(self.residual(torch.cat([uu, z], -1)).squeeze(-1))
        return r

    def _sampler(self, u: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.sampler(u).chunk(2, -1)
        return mu, _soft_clamp(log_std, self.config.min_log_std, self.config.max_log_std)

    def reward(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``r_x(s, a, s')`` for a batch, ``[B]`` (differentiable in ``x``)."""
        return self._reward_z(self._context(obs, act), self._z(obs, next_obs))

    def inner_objective(self, u: torch.Tensor, n_samples: int = 1, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``mean_B ( E_{z ~ p_theta}[r_x(u, z)] + tau H(p_theta(.|u)) )`` by reparameterisation (1)."""
        mu, log_std = self._sampler(u)
        eps = torch.randn((u.shape[0], n_samples, mu.shape[-1]), generator=generator, dtype=mu.dtype)
        z = mu[:, None] + torch.exp(log_std)[:, None] * eps
        entropy = log_std.sum(-1) + 0.5 * mu.shape[-1] * (1.0 + np.log(2 * np.pi))
        return (self._reward_z(u, z).mean(-1) + self.tau * entropy).mean()

    def outer_surrogate(self, u: torch.Tensor, z_data: torch.Tensor, n_samples: int = 4,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Surrogate of (3) with ``n_samples`` draws of the (detached) sampler per transition."""
        with torch.no_grad():
            mu, log_std = self._sampler(u)
            eps = torch.randn((u.shape[0], n_samples, mu.shape[-1]), generator=generator, dtype=mu.dtype)
            z_model = mu[:, None] + torch.exp(log_std)[:, None] * eps
        return horizon1_surrogate(self._reward_z(u, z_data), self._reward_z(u, z_model), self.tau)

    # ------------------------------------------------------------------ the deployed model
    def log_prob(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
        """``log p_theta(s'|s, a)`` in raw units, ``[B]``."""
        u, z = self._context(obs, act), self._z(obs, next_obs)
        mu, log_std = self._sampler(u)
        logp = -0.5 * (((z - mu) / torch.exp(log_std)) ** 2 + 2 * log_std + np.log(2 * np.pi)).sum(-1)
        return logp - torch.log(self.out_std).sum()

    @torch.no_grad()
    def energy_log_prob(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, n_samples: int = 256,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``log p*_x(s'|s, a)`` of (1) in raw units, ``[B]``: ``r_x / tau - log Z_x`` with ``Z_x``
        estimated by importance sampling from ``q = N(m, tau exp(-c))``, the normalised quadratic
        part (weights ``exp(B tanh(h) / tau)`` lie in ``[exp(-B/tau), exp(B/tau)]``; exact for ``B = 0``)."""
        cfg = self.config
        u, z = self._context(obs, act), self._z(obs, next_obs)
        m, c = self.centre(u).chunk(2, -1)
        c = _soft_clamp(c, cfg.min_log_precision, cfg.max_log_precision)
        d = m.shape[-1]
        # log of the Gaussian integral  int exp(-1/2 sum exp(c)(z - m)^2 / tau) dz
        log_gauss = 0.5 * (d * np.log(2 * np.pi * self.tau) - c.sum(-1))
        if cfg.residual_scale > 0:
            std = torch.sqrt(self.tau * torch.exp(-c))
            eps = torch.randn((u.shape[0], int(n_samples), d), generator=generator, dtype=m.dtype)
            zq = m[:, None] + std[:, None] * eps
            h = cfg.residual_scale * torch.tanh(self.residual(torch.cat([u[:, None].expand(-1, zq.shape[1], -1), zq], -1)).squeeze(-1))
            log_z = log_gauss + torch.logsumexp(h / self.tau, -1) - np.log(zq.shape[1])
        else:
            log_z = log_gauss
        return self._reward_z(u, z) / self.tau - log_z - torch.log(self.out_std).sum()

    @torch.no_grad()
    def predict(self, obs: torch.Tensor, act: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampler mean and variance of ``s'`` in raw units: ``(next_obs_mean [B, d], var [B, d])``."""
        mu, log_std = self._sampler(self._context(obs, act))
        return obs + self.out_mean + mu * self.out_std, torch.exp(2 * log_std) * self.out_std**2

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, act: torch.Tensor, generator: Optional[torch.Generator] = None,
               deterministic: bool = False) -> torch.Tensor:
        """One model step ``s' ~ p_theta(.|s, a)`` for a batch, ``[B, d]`` (``deterministic``: the mean)."""
        mu, log_std = self._sampler(self._context(obs, act))
        if not deterministic:
            mu = mu + torch.exp(log_std) * torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        return obs + self.out_mean + mu * self.out_std

    # ------------------------------------------------------------------ training
    def _as_data(self, obs, act, next_obs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def t(name, a):
            try:
                return torch.as_tensor(np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float32))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name} must be a numeric array: {err}") from err

        obs, act, next_obs = t("obs", obs), t("act", act), t("next_obs", next_obs)
        if act.ndim == 1 and self.config.act_dim == 1:
            act = act[:, None]
        n = obs.shape[0] if obs.ndim else 0
        for name, x, d in (("obs", obs, self.config.obs_dim), ("act", act, self.config.act_dim), ("next_obs", next_obs, self.config.obs_dim)):
            if x.ndim != 2 or x.shape[1] != d or x.shape[0] != n:
                raise ValueError(f"{name} must have shape [N, {d}] with N = len(obs) = {n}, got {tuple(x.shape)}")
            if not torch.isfinite(x).all():
                raise ValueError(f"{name} must be finite")
        return obs, act, next_obs

    @torch.no_grad()
    def evaluate(self, obs, act, next_obs, energy_samples: int = 0, generator: Optional[torch.Generator] = None) -> Dict[str, float]:
        """Sampler NLL ``-mean log p_theta`` (raw units, nats per transition) and mean-prediction MSE
        (per state dimension); with ``energy_samples > 0`` also ``energy_nll = -mean log p*_x``."""
        obs, act, next_obs = self._as_data(obs, act, next_obs)
        out = {"nll": float(-self.log_prob(obs, act, next_obs).mean()),
               "mse": float(((self.predict(obs, act)[0] - next_obs) ** 2).mean())}
        if energy_samples:
            out["energy_nll"] = float(-self.energy_log_prob(obs, act, next_obs, energy_samples, generator).mean())
        return out

    def fit(self, obs, act, next_obs, *, iterations: int = 2500, batch_size: int = 256, inner_steps: int = 4,
            n_samples: int = 4, lr_reward: float = 1e-4, lr_sampler: float = 1e-3, weight_decay: float = 1e-5,
            eval_every: int = 250, val_data: Optional[Tuple] = None, seed: Optional[int] = None,
            set_normalizer: bool = True) -> SoftFitResult:
        """Alternate ``inner_steps`` sampler steps (ascent on (1)) and one reward step (descent along (3)).

        Args:
            obs, act, next_obs: training transitions ``[N, obs_dim]``, ``[N, act_dim]``, ``[N, obs_dim]``.
            iterations: outer (reward) steps.
            batch_size: transitions per step (both levels draw their own minibatch).
            inner_steps: sampler steps per reward step.
            n_samples: sampler draws per transition in (3) and in the inner objective.
            lr_reward, lr_sampler: Adam step sizes of ``x`` and ``theta``.  Two time scales (the inner
                level faster) matter: with the sampler lagging the reward, the reward's precision outruns
                the sampler's mean and the sampler NLL spikes (seen on Pendulum with ``lr_reward = 1e-3``,
                2 inner steps; ``1e-4`` with 4 inner steps trained smoothly).
            eval_every: iterations between entries of the returned history.
            val_data: optional held-out ``(obs, act, next_obs)`` for ``val_nll`` / ``val_mse``.
            seed: seed of the minibatch and noise generator.
            set_normalizer: recompute the standardisation from the data (keep ``False`` to warm-start).
        """
        obs, act, next_obs = self._as_data(obs, act, next_obs)
        n = obs.shape[0]
        if n < 2:
            raise ValueError(f"obs: need at least 2 transitions to fit, got {n}")
        iterations, batch_size, inner_steps = _pos_int("iterations", iterations), _pos_int("batch_size", batch_size), _pos_int("inner_steps", inner_steps)
        n_samples, eval_every = _pos_int("n_samples", n_samples), _pos_int("eval_every", eval_every)
        for name, v in (("lr_reward", lr_reward), ("lr_sampler", lr_sampler)):
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if val_data is not None:
            if len(val_data) != 3:
                raise ValueError("val_data must be a tuple (obs, act, next_obs)")
            val_data = self._as_data(*val_data)
        if set_normalizer:
            self.set_normalizer(obs, act, next_obs)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        u_all, z_all = self._context(obs, act), self._z(obs, next_obs)
        opt_x = torch.optim.Adam(self.reward_parameters(), lr=lr_reward, weight_decay=weight_decay)
        opt_theta = torch.optim.Adam(self.sampler_parameters(), lr=lr_sampler, weight_decay=weight_decay)
        probe = torch.randperm(n, generator=gen)[: min(n, 2048)]
        result, outer_acc, inner_acc = SoftFitResult(), [], []
        batch = min(batch_size, n)
        for it in range(1, iterations + 1):
            # inner level: ascent on E_{p_theta}[r_x] + tau H (the reward is held fixed)
            for p in self.reward_parameters():
                p.requires_grad_(False)
            for _ in range(inner_steps):
                idx = torch.randint(n, (batch,), generator=gen)
                j = self.inner_objective(u_all[idx], n_samples, gen)
                opt_theta.zero_grad()
                (-j).backward()
                opt_theta.step()
                inner_acc.append(float(j.detach()))
            for p in self.reward_parameters():
                p.requires_grad_(True)
            # outer level: descent along the horizon-1 hypergradient (3)
            idx = torch.randint(n, (batch,), generator=gen)
            loss = self.outer_surrogate(u_all[idx], z_all[idx], n_samples, gen)
            opt_x.zero_grad()
            loss.backward()
            opt_x.step()
            outer_acc.append(float(loss.detach()))
            if it % eval_every == 0 or it == iterations:
                result.iterations.append(it)
                result.outer_loss.append(float(np.mean(outer_acc)))
                result.inner_objective.append(float(np.mean(inner_acc)))
                outer_acc, inner_acc = [], []
                with torch.no_grad():
                    result.train_nll.append(float(-self.log_prob(obs[probe], act[probe], next_obs[probe]).mean()))
                    if val_data is not None:
                        ev = self.evaluate(*val_data)
                        result.val_nll.append(ev["nll"])
                        result.val_mse.append(ev["mse"])
        return result

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Atomically write config and weights (:func:`birl.serialization.save_state`)."""
        from dataclasses import asdict

        from birl.serialization import save_state

        cfg = asdict(self.config)
        cfg["hidden"] = list(cfg["hidden"])
        save_state(path, type(self).__name__, cfg, self.state_dict())

    @classmethod
    def load(cls, path, map_location="cpu") -> "SoftWorldModel":
        """Read a file written by :meth:`save`."""
        from birl.serialization import load_state

        _, cfg, state = load_state(path, expected_kind=cls.__name__, map_location=map_location)
        cfg["hidden"] = tuple(cfg["hidden"])
        model = cls(SoftWorldModelConfig(**cfg))
        model.load_state_dict(state)
        return model.to(map_location)
