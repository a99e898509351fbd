"""Learned dynamics for model-based soft bilevel RL (DESIGN.md sections 2 and 5; seed 003, M-SoBiRL).

M-SoBiRL needs the transition kernel ``P`` (seed 003, "Model-based bilevel RL algorithm:
M-SoBiRL").  Outside tables ``P`` is unknown and is learned from the replay buffer:

* :class:`GaussianEnsemble`: a probabilistic ensemble of ``E`` Gaussian MLPs over
  ``(s, a) -> (s' - s, termination)``.  Member ``e`` predicts a diagonal Gaussian
  ``N(mu_e(s, a), diag(sigma_e^2(s, a)))`` over the state change and a Bernoulli logit for
  termination.  All members run in one batched forward pass (:class:`EnsembleLinear`).
  Training minimises the Gaussian negative log-likelihood

      NLL_e = mean_i [ (d_i - mu_e)^2 / sigma_e^2 + log sigma_e^2 ] / 2   (+ BCE of termination)

  on a bootstrap resample per member, with standardised inputs, soft bounds on ``log sigma^2``
  (learned, lightly penalised), a held-out split for early stopping and *elite* selection
  (the members with the lowest held-out error are used for rollouts).
* :class:`TabularCounts`: the tabular counterpart, ``P_hat(s'|s, a)`` from transition counts
  with a Dirichlet pseudo-count (uniform where nothing was seen).

Both save and load atomically through :mod:`birl.serialization`.  numpy + torch only.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from birl.serialization import load_state, save_state

__all__ = ["EnsembleConfig", "EnsembleLinear", "GaussianEnsemble", "FitResult", "TabularCounts"]

PathLike = Union[str, "os.PathLike[str]"]
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "elu": nn.ELU}


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Ensemble layers
# --------------------------------------------------------------------------------------------


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied in one batched matmul: ``[E, B, i] -> [E, B, o]``."""

    def __init__(self, n_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(n_members, 1, out_features))
        bound = 1.0 / np.sqrt(in_features)  # PyTorch's default nn.Linear range, per member
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


@dataclass
class EnsembleConfig:
    """Constructor arguments of :class:`GaussianEnsemble` (stored with its weights).

    Attributes:
        obs_dim, act_dim: flat observation and action widths.
        n_members: ensemble size ``E``.
        n_elites: members used for rollouts (the best on held-out data).
        hidden: hidden layer widths shared by all members.
        activation: ``relu``, ``silu``, ``tanh`` or ``elu``.
        learn_termination: also predict a termination logit (else rollouts never terminate
            unless a termination function is given to :class:`birl.model_env.ModelEnv`).
        min_logvar, max_logvar: initial soft bounds of ``log sigma^2`` (standardised units).
    """

    obs_dim: int
    act_dim: int
    n_members: int = 5
    n_elites: int = 3
    hidden: Tuple[int, ...] = (200, 200)
    activation: str = "silu"
    learn_termination: bool = True
    min_logvar: float = -10.0
    max_logvar: float = 0.5

    def __post_init__(self) -> None:
        self.obs_dim = _positive_int("obs_dim", self.obs_dim)
        self.act_dim = int(self.act_dim)
        if self.act_dim < 0:
            raise ValueError(f"act_dim must be >= 0, got {self.act_dim}")
        self.n_members = _positive_int("n_members", self.n_members)
        self.n_elites = _positive_int("n_elites", self.n_elites)
        if self.n_elites > self.n_members:
            raise ValueError(f"n_elites must be <= n_members={self.n_members}, got {self.n_elites}")
        self.hidden = tuple(_positive_int("hidden", h) for h in self.hidden)
        if not self.hidden:
            raise ValueError("hidden must contain at least one layer width")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if not self.min_logvar < self.max_logvar:
            raise ValueError(f"min_logvar must be < max_logvar, got {self.min_logvar} and {self.max_logvar}")


@dataclass
class FitResult:
    """What :meth:`GaussianEnsemble.fit` did.

    Attributes:
        train_loss: mean training loss (NLL + termination BCE + bound penalty) per epoch.
        val_mse: held-out mean squared error of each member's mean, per epoch ``[epochs, E]``.
        final_mse, final_nll: held-out MSE and Gaussian NLL per member at the restored (best)
            weights ``[E]``; elites are chosen by ``final_mse``.
        elites: indices of the elite members (lowest held-out MSE first).
        n_val: number of held-out transitions (0: the training data were used for validation).
        epochs: epochs run (the last one partial when ``max_updates`` cut it short).
        updates: gradient updates made.
    """

    train_loss: List[float] = field(default_factory=list)
    val_mse: List[List[float]] = field(default_factory=list)
    final_mse: List[float] = field(default_factory=list)
    final_nll: List[float] = field(default_factory=list)
    n_val: int = 0
    elites: List[int] = field(default_factory=list)
    epochs: int = 0
    updates: int = 0


# --------------------------------------------------------------------------------------------
# Probabilistic ensemble
# --------------------------------------------------------------------------------------------


class GaussianEnsemble(nn.Module):
    """Probabilistic ensemble of Gaussian MLP dynamics models (module docstring).

    Inputs are flat float tensors: ``obs [B, obs_dim]`` and ``act [B, act_dim]`` (the same batch
    for every member) or ``[E, B, .]`` (one batch per member, as in bootstrap training).

    Example::

        model = GaussianEnsemble(EnsembleConfig(obs_dim=3, act_dim=1))
        result = model.fit(obs, act, next_obs, terminated)
        next_obs, term = model.sample(obs, act)
    """

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__()
        if not isinstance(config, EnsembleConfig):
            raise TypeError(f"config must be an EnsembleConfig, got {type(config).__name__}")
        self.config = config
        E, d_in = config.n_members, config.obs_dim + config.act_dim
        widths = (d_in, *config.hidden)
        layers: List[nn.Module] = []
        for i, o in zip(widths[:-1], widths[1:]):
            layers += [EnsembleLinear(E, i, o), _ACTIVATIONS[config.activation]()]
        self.trunk = nn.Sequential(*layers)
        self.head = EnsembleLinear(E, widths[-1], 2 * config.obs_dim + 1)  # mean, logvar, termination
        self.max_logvar = nn.Parameter(torch.full((config.obs_dim,), float(config.max_logvar)))
        self.min_logvar = nn.Parameter(torch.full((config.obs_dim,), float(config.min_logvar)))
        self.register_buffer("in_mean", torch.zeros(d_in))
        self.register_buffer("in_std", torch.ones(d_in))
        self.register_buffer("out_std", torch.ones(config.obs_dim))  # scale of s' - s
        self.register_buffer("elites", torch.arange(config.n_elites))

    # ------------------------------------------------------------------ forward
    @property
    def n_members(self) -> int:
        return self.config.n_members

    @property
    def device(self) -> torch.device:
        return self.in_mean.device

    def _inputs(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Standardised ``[E, B, obs_dim + act_dim]`` inputs (validated)."""
        for name, x, d in (("obs", obs, self.config.obs_dim), ("act", act, self.config.act_dim)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.ndim not in (2, 3) or x.shape[-1] != d:
                raise ValueError(f"{name} must have shape [B, {d}] or [E, B, {d}], got {tuple(x.shape)}")
        if obs.shape[:-1] != act.shape[:-1]:
            raise ValueError(f"obs and act batch shapes differ: {tuple(obs.shape)} vs {tuple(act.shape)}")
        x = torch.cat([obs, act], -1).to(self.in_mean.dtype)
        x = (x - self.in_mean) / self.in_std
        if x.ndim == 2:
            x = x.expand(self.n_members, *x.shape)
        elif x.shape[0] != self.n_members:
            raise ValueError(f"per-member inputs need a leading dimension of {self.n_members}, got {x.shape[0]}")
        return x

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, logvar, term_logit)`` of the (standardised) state change, each ``[E, B, .]``.

        ``mean``/``logvar`` refer to ``(s' - s) / out_std``; ``term_logit`` is ``[E, B]``.
        """
        out = self.head(self.trunk(self._inputs(obs, act)))
        d = self.config.obs_dim
        mean, raw_logvar, term = out[..., :d], out[..., d : 2 * d], out[..., 2 * d]
        # soft bounds: logvar stays inside (min_logvar, max_logvar), smoothly
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, term

    def loss(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor) -> torch.Tensor:
        """Training loss summed over members: Gaussian NLL of ``s' - s`` (+ termination BCE)
        ``+ 0.01 (sum max_logvar - sum min_logvar)`` (keeps the soft bounds tight)."""
        mean, logvar, term = self(obs, act)
        target = ((next_obs - obs).to(mean.dtype) / self.out_std).expand_as(mean)
        nll = 0.5 * (((target - mean) ** 2) * torch.exp(-logvar) + logvar).mean((-1, -2)).sum()
        if self.config.learn_termination:
            nll = nll + F.binary_cross_entropy_with_logits(term, terminated.to(term.dtype).expand_as(term), reduction="none").mean(-1).sum()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def set_normalizer(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> None:
        """Standardise inputs and targets with the moments of the training data."""
        x = torch.cat([obs, act], -1).to(self.in_mean.dtype)
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0, unbiased=False).clamp_min(1e-6))
        self.out_std.copy_((next_obs - obs).to(self.out_std.dtype).std(0, unbiased=False).clamp_min(1e-6))

    @torch.no_grad()
    def member_errors(self, obs, act, next_obs, terminated) -> Tuple[torch.Tensor, torch.Tensor]:
        """Held-out ``(mse [E], nll [E])`` per member (MSE of the mean in raw units of ``s' - s``)."""
        mean, logvar, _ = self(obs, act)
        target = (next_obs - obs).to(mean.dtype) / self.out_std
        mse = (((mean - target) * self.out_std) ** 2).mean((-1, -2))
        nll = 0.5 * (((target - mean) ** 2) * torch.exp(-logvar) + logvar + np.log(2 * np.pi)).sum(-1).mean(-1)
        return mse, nll + torch.log(self.out_std).sum()

    def fit(
        self,
        obs,
        act,
        next_obs,
        terminated=None,
        *,
        max_epochs: int = 100,
        batch_size: int = 256,
        holdout_ratio: float = 0.2,
        max_holdout: int = 5000,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        patience: int = 5,
        bootstrap: bool = True,
        seed: Optional[int] = None,
        max_updates: Optional[int] = None,
    ) -> FitResult:
        """Train all members by NLL; keep each member's best held-out weights; pick elites.

        Args:
            obs, act, next_obs: arrays ``[N, obs_dim]``, ``[N, act_dim]``, ``[N, obs_dim]``.
            terminated: ``[N]`` booleans (default all False).
            max_epochs: epochs cap; training stops earlier when no member improved its held-out
                MSE by more than 1% for ``patience`` epochs.
            holdout_ratio: fraction of the data held out (at most ``max_holdout`` rows); with
                ``0`` the training data double as validation data.
            bootstrap: each member trains on its own resample (with replacement) of the data.
            seed: shuffling seed.
            max_updates: cap on the gradient updates of this call (``None``: no cap).  The
                epoch the cap falls in ends there, and is validated like any other.  With a
                warm-started ensemble refitted every few hundred env steps (MBPO) this bounds
                the cost of a refit, which otherwise grows with the replay buffer.

        Returns:
            :class:`FitResult`.
        """
        obs, act, next_obs, terminated = self._as_data(obs, act, next_obs, terminated)
        n = obs.shape[0]
        if n < 2:
            raise ValueError(f"obs: need at least 2 transitions to fit, got {n}")
        if not 0 <= holdout_ratio < 1:
            raise ValueError(f"holdout_ratio must lie in [0, 1), got {holdout_ratio!r}")
        for name, v in (("max_epochs", max_epochs), ("batch_size", batch_size), ("patience", patience)):
            _positive_int(name, v)
        budget = float("inf") if max_updates is None else _positive_int("max_updates", max_updates)
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        perm = torch.randperm(n, generator=gen).to(self.device)
        n_val = min(int(n * holdout_ratio), int(max_holdout))
        val, train = perm[:n_val], perm[n_val:]
        if n_val == 0:
            val = train
        self.set_normalizer(obs[train], act[train], next_obs[train])
        opt = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        E, n_train = self.n_members, train.numel()
        if bootstrap:
            idx = train[torch.randint(n_train, (E, n_train), generator=gen).to(self.device)]
        else:
            idx = train.expand(E, n_train)
        best = torch.full((E,), float("inf"))
        best_state = copy.deepcopy(self.state_dict())
        result, stale = FitResult(), 0
        for epoch in range(int(max_epochs)):
            self.train()
            order = idx[:, torch.randperm(n_train, generator=gen).to(self.device)]
            losses = []
            for start in range(0, n_train, int(batch_size)):
                if result.updates >= budget:
                    break
                b = order[:, start : start + int(batch_size)]
                loss = self.loss(obs[b], act[b], next_obs[b], terminated[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()) / E)
                result.updates += 1
            self.eval()
            mse, _ = self.member_errors(obs[val], act[val], next_obs[val], terminated[val])
            mse = mse.cpu()
            result.train_loss.append(float(np.mean(losses)))
            result.val_mse.append(mse.tolist())
            improved = mse < best * 0.99
            if improved.any():
                state = self.state_dict()
                for e in torch.nonzero(improved).reshape(-1).tolist():
                    _copy_member(best_state, state, e)
                best = torch.where(improved, mse, best)
                stale = 0
            else:
                stale += 1
            result.epochs = epoch + 1
            if stale >= patience or result.updates >= budget:
                break
        # shared parameters (normaliser, logvar bounds) take their final values
        for k in ("max_logvar", "min_logvar", "in_mean", "in_std", "out_std"):
            best_state[k] = self.state_dict()[k]
        self.load_state_dict(best_state)
        mse, nll = self.member_errors(obs[val], act[val], next_obs[val], terminated[val])
        self.elites.copy_(torch.argsort(mse)[: self.config.n_elites])
        result.final_mse, result.final_nll = mse.cpu().tolist(), nll.cpu().tolist()
        result.elites, result.n_val = self.elites.cpu().tolist(), n_val
        return result

    def _as_data(self, obs, act, next_obs, terminated):
        t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32) if not isinstance(a, torch.Tensor) else a, device=self.device).float()  # noqa: E731
        obs, act, next_obs = t(obs), t(act), t(next_obs)
        if act.ndim == 1 and self.config.act_dim == 1:
            act = act[:, None]
        for name, x, d in (("obs", obs, self.config.obs_dim), ("act", act, self.config.act_dim), ("next_obs", next_obs, self.config.obs_dim)):
            if x.ndim != 2 or x.shape[1] != d or x.shape[0] != obs.shape[0]:
                raise ValueError(f"{name} must have shape [N, {d}] with N={obs.shape[0]}, got {tuple(x.shape)}")
        if not (torch.isfinite(obs).all() and torch.isfinite(act).all() and torch.isfinite(next_obs).all()):
            raise ValueError("obs, act and next_obs must be finite")
        terminated = torch.zeros(obs.shape[0], device=self.device) if terminated is None else t(terminated).reshape(-1)
        if terminated.shape[0] != obs.shape[0]:
            raise ValueError(f"terminated must have shape [{obs.shape[0]}], got {tuple(terminated.shape)}")
        return obs, act, next_obs, terminated

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, obs: torch.Tensor, act: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Elite-mean prediction: ``(next_obs_mean [B, d], total_var [B, d], p_terminate [B])``.

        ``total_var`` = mean aleatoric variance + variance of the member means (epistemic).
        """
        mean, logvar, term = self(obs, act)
        el = self.elites
        mean, var = mean[el] * self.out_std, torch.exp(logvar[el]) * self.out_std**2
        mu = mean.mean(0)
        return obs + mu, var.mean(0) + mean.var(0, unbiased=False), torch.sigmoid(term[el]).mean(0)

    @torch.no_grad()
    def sample(
        self, obs: torch.Tensor, act: torch.Tensor, generator: Optional[torch.Generator] = None, deterministic: bool = False
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One model step for a batch: each row uses a random elite member and a Gaussian draw.

        Returns ``(next_obs [B, d], terminated [B] bool)``; termination is
        ``sigmoid(logit) > 0.5`` of the chosen member (all False without ``learn_termination``).
        ``deterministic`` uses the chosen member's mean.
        """
        mean, logvar, term = self(obs, act)
        B = obs.shape[0]
        pick = self.elites[torch.randint(len(self.elites), (B,), generator=generator).to(self.device)]
        rows = torch.arange(B, device=self.device)
        mu, lv, tl = mean[pick, rows], logvar[pick, rows], term[pick, rows]
        if not deterministic:
            eps = torch.randn(mu.shape, generator=generator).to(self.device)
            mu = mu + torch.exp(0.5 * lv) * eps
        done = tl > 0 if self.config.learn_termination else torch.zeros(B, dtype=torch.bool, device=self.device)
        return obs + mu * self.out_std, done

    # ------------------------------------------------------------------ persistence
    def save(self, path: PathLike) -> None:
        """Atomically write config and weights (one file, see :func:`birl.serialization.save_state`)."""
        cfg = asdict(self.config)
        cfg["hidden"] = list(cfg["hidden"])
        save_state(path, type(self).__name__, cfg, self.state_dict())

    @classmethod
    def load(cls, path: PathLike, map_location: Union[str, torch.device] = "cpu") -> "GaussianEnsemble":
        """Read a file written by :meth:`save`."""
        _, cfg, state = load_state(path, expected_kind=cls.__name__, map_location=map_location)
        cfg["hidden"] = tuple(cfg["hidden"])
        model = cls(EnsembleConfig(**cfg))
        model.load_state_dict(state)
        return model.to(map_location)


def _copy_member(dst: Dict[str, torch.Tensor], src: Dict[str, torch.Tensor], e: int) -> None:
    """Copy member ``e``'s slice of every per-member tensor (leading dim ``E``) from ``src``."""
    for k, v in src.items():
        if k.startswith(("trunk.", "head.")):
            dst[k] = dst[k].clone()
            dst[k][e] = v[e]


# --------------------------------------------------------------------------------------------
# Tabular model
# --------------------------------------------------------------------------------------------


class TabularCounts:
    """Maximum-a-posteriori tabular model ``P_hat(s'|s,a) = (N(s,a,s') + alpha) / (N(s,a) + S alpha)``.

    With ``alpha = 0`` unseen ``(s, a)`` rows fall back to uniform.  ``P_hat -> P`` as the
    counts grow, so estimators run on ``P_hat`` (M-SoBiRL's w-iteration) converge to those on ``P``.
    """

    def __init__(self, n_states: int, n_actions: int, prior: float = 0.0) -> None:
        self.n_states, self.n_actions = _positive_int("n_states", n_states), _positive_int("n_actions", n_actions)
        if not prior >= 0:
            raise ValueError(f"prior must be >= 0, got {prior!r}")
        self.prior = float(prior)
        self.counts = np.zeros((self.n_states, self.n_actions, self.n_states))

    def update(self, states, actions, next_states) -> "TabularCounts":
        """Add transitions (integer arrays of equal length)."""
        s, a, s2 = (np.asarray(v).reshape(-1) for v in (states, actions, next_states))
        if not (s.shape == a.shape == s2.shape):
            raise ValueError(f"states, actions and next_states must have equal lengths, got {s.shape}, {a.shape}, {s2.shape}")
        for name, v, n in (("states", s, self.n_states), ("actions", a, self.n_actions), ("next_states", s2, self.n_states)):
            if v.size and (v.min() < 0 or v.max() >= n or not np.all(v == np.round(v))):
                raise ValueError(f"{name} must be integers in [0, {n})")
        np.add.at(self.counts, (s.astype(np.int64), a.astype(np.int64), s2.astype(np.int64)), 1.0)
        return self

    @property
    def n_transitions(self) -> int:
        return int(self.counts.sum())

    def P(self) -> np.ndarray:
        """The estimate ``P_hat`` of shape ``(S, A, S)`` (every row a distribution)."""
        c = self.counts + self.prior
        tot = c.sum(-1, keepdims=True)
        return np.where(tot > 0, c / np.where(tot > 0, tot, 1.0), 1.0 / self.n_states)

    def save(self, path: PathLike) -> None:
        save_state(path, type(self).__name__, {"n_states": self.n_states, "n_actions": self.n_actions, "prior": self.prior},
                   {"counts": torch.as_tensor(self.counts)})

    @classmethod
    def load(cls, path: PathLike) -> "TabularCounts":
        _, cfg, state = load_state(path, expected_kind=cls.__name__)
        model = cls(**cfg)
        counts = state["counts"].numpy()
        if counts.shape != model.counts.shape:
            raise ValueError(f"{path!r}: counts have shape {counts.shape}, expected {model.counts.shape}")
        model.counts = counts.astype(np.float64)
        return model
