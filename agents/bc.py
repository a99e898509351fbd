"""Behaviour cloning (BC): the supervised baseline of offline imitation (seed 002, "Application to
Fine-Tuning of LLM": ``min_pi -E_D[log pi(a|s)]``, the SFT loss that ML-IRL is compared with).

:class:`BehaviourCloning` fits an MLP policy to the ``(s, a)`` pairs of a
:class:`birl.feedback.Demonstrations` dataset (``Box`` observations and actions):

* inputs are standardised with the dataset's moments; actions are mapped to ``[-1, 1]`` with the
  action space's bounds (unbounded coordinates are standardised instead);
* ``loss="gaussian_nll"`` (default): the network outputs a mean and a state-dependent log standard
  deviation and minimises ``0.5 ((a - mu) / sigma)^2 + log sigma`` (the negative log-likelihood
  of a diagonal Gaussian policy, up to a constant); ``loss="mse"``: the mean only, squared error;
* early stopping on a held-out split of the transitions (``holdout_ratio``; with fewer than
  ``2 / holdout_ratio`` transitions the training data double as validation data): training stops
  after ``patience`` epochs without a 0.1% improvement of the held-out loss and the best weights
  are restored.  Consecutive transitions of one episode are correlated, so the held-out loss is
  optimistic; it is used only to stop;
* :meth:`predict` has SB3's signature, so ``stable_baselines3.common.evaluation.evaluate_policy``
  and :meth:`birl.feedback.Demonstrations.collect` accept the model; ``deterministic=True``
  returns the mean, otherwise a Gaussian sample (``mse``: always the mean); actions are clipped to
  the bounds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch as th
import torch.nn as nn
from gymnasium import spaces

from birl.feedback import Demonstrations

__all__ = ["BehaviourCloning", "BCFitResult"]

LOSSES = ("gaussian_nll", "mse")


@dataclass
class BCFitResult:
    """What :meth:`BehaviourCloning.fit` did: per-epoch losses, the best epoch and split sizes."""

    train_loss: List[float] = field(default_factory=list)
    val_loss: List[float] = field(default_factory=list)
    best_epoch: int = -1
    epochs: int = 0
    n_train: int = 0
    n_val: int = 0


class BehaviourCloning:
    """MLP behaviour-cloning policy (module docstring).

    Args:
        observation_space, action_space: flat ``Box`` spaces of the env (e.g. ``env.observation_space``).
        hidden: hidden layer widths.
        loss: ``"gaussian_nll"`` (default) or ``"mse"``.
        lr, weight_decay: Adam settings.
        batch_size: minibatch size.
        max_epochs, patience: epoch cap and early-stopping patience.
        holdout_ratio: fraction of transitions held out for early stopping, in ``[0, 1)``.
        seed: seed of the initial weights, the split and the minibatch order.
        device: torch device (``"cpu"`` default: the networks are tiny).
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Box,
        hidden: Sequence[int] = (256, 256),
        loss: str = "gaussian_nll",
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        batch_size: int = 256,
        max_epochs: int = 1000,
        patience: int = 50,
        holdout_ratio: float = 0.2,
        seed: Optional[int] = None,
        device: Union[str, th.device] = "cpu",
    ) -> None:
        for name, space in (("observation_space", observation_space), ("action_space", action_space)):
            if not isinstance(space, spaces.Box):
                raise TypeError(f"{name} must be a gymnasium Box, got {space}")
        if len(observation_space.shape) != 1:
            raise ValueError(f"observation_space must be flat (one dimension), got shape {observation_space.shape}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        for name, value in (("batch_size", batch_size), ("max_epochs", max_epochs), ("patience", patience)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= holdout_ratio < 1:
            raise ValueError(f"holdout_ratio must lie in [0, 1), got {holdout_ratio!r}")
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        hidden = tuple(int(h) for h in hidden)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must be a non-empty sequence of positive widths, got {hidden!r}")
        self.observation_space, self.action_space = observation_space, action_space
        self.hidden, self.loss, self.lr, self.weight_decay = hidden, loss, float(lr), float(weight_decay)
        self.batch_size, self.max_epochs, self.patience = int(batch_size), int(max_epochs), int(patience)
        self.holdout_ratio, self.seed, self.device = float(holdout_ratio), seed, th.device(device)
        self.obs_dim, self.act_dim = int(observation_space.shape[0]), int(np.prod(action_space.shape))
        layers: List[nn.Module] = []
        width = self.obs_dim
        with th.random.fork_rng(devices=[]):  # seeded weights without touching the global RNG
            if seed is not None:
                th.manual_seed(int(seed))
            for h in hidden:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, 2 * self.act_dim if loss == "gaussian_nll" else self.act_dim))
        self.net = nn.Sequential(*layers).to(self.device)
        # normalisation: obs standardised (fitted), actions to [-1, 1] (bounds) or standardised (fitted)
        self.obs_mean, self.obs_std = np.zeros(self.obs_dim, np.float32), np.ones(self.obs_dim, np.float32)
        low, high = action_space.low.reshape(-1).astype(np.float64), action_space.high.reshape(-1).astype(np.float64)
        self._bounded = np.isfinite(low) & np.isfinite(high)
        self.act_centre = np.where(self._bounded, (low + high) / 2, 0.0).astype(np.float32)
        self.act_scale = np.where(self._bounded, (high - low) / 2, 1.0).astype(np.float32)
        self.fitted = False

    # ------------------------------------------------------------------ data
    def _arrays(self, data: Union[Demonstrations, Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, np.ndarray]:
        if isinstance(data, Demonstrations):
            if len(data) == 0 or data.n_transitions == 0:
                raise ValueError("data: the Demonstrations hold no transition")
            t = data.transitions()
            obs, acts = t["obs"], t["acts"]
        elif isinstance(data, tuple) and len(data) == 2:
            obs, acts = (np.asarray(x) for x in data)
        else:
            raise TypeError(f"data must be Demonstrations or a tuple (obs, acts), got {type(data).__name__}")
        obs = np.asarray(obs, np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"data: observations must have shape [N, {self.obs_dim}], got {obs.shape}")
        acts = np.asarray(acts, np.float32).reshape(len(acts), -1)
        if acts.shape != (obs.shape[0], self.act_dim):
            raise ValueError(f"data: actions must have shape [{obs.shape[0]}, {self.act_dim}], got {acts.shape}")
        if obs.shape[0] < 2:
            raise ValueError(f"data: need at least 2 transitions, got {obs.shape[0]}")
        if not (np.all(np.isfinite(obs)) and np.all(np.isfinite(acts))):
            raise ValueError("data: observations and actions must be finite")
        return obs, acts

    def _norm_obs(self, obs: np.ndarray) -> th.Tensor:
        return th.as_tensor((np.asarray(obs, np.float32) - self.obs_mean) / self.obs_std, device=self.device)

    def _norm_act(self, acts: np.ndarray) -> th.Tensor:
        lo, hi = self.action_space.low.reshape(-1), self.action_space.high.reshape(-1)
        a = np.where(self._bounded, np.clip(acts, lo, hi), acts)
        return th.as_tensor((a - self.act_centre) / self.act_scale, device=self.device, dtype=th.float32)

    def _heads(self, x: th.Tensor) -> Tuple[th.Tensor, Optional[th.Tensor]]:
        out = self.net(x)
        if self.loss == "mse":
            return out, None
        mu, log_std = out[..., : self.act_dim], out[..., self.act_dim :]
        return mu, log_std.clamp(-5.0, 2.0)

    def _loss(self, x: th.Tensor, a: th.Tensor) -> th.Tensor:
        mu, log_std = self._heads(x)
        if log_std is None:
            return ((mu - a) ** 2).sum(-1).mean()
        return (0.5 * ((a - mu) * th.exp(-log_std)) ** 2 + log_std).sum(-1).mean()

    # ------------------------------------------------------------------ training
    def fit(self, data: Union[Demonstrations, Tuple[np.ndarray, np.ndarray]]) -> BCFitResult:
        """Fit on ``data`` (Demonstrations or ``(obs [N, d], acts [N, k])`` in env units)."""
        obs, acts = self._arrays(data)
        n = obs.shape[0]
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(n)
        n_val = int(n * self.holdout_ratio) if n * self.holdout_ratio >= 2 else 0
        val, train = perm[:n_val], perm[n_val:]
        if n_val == 0:
            val = train
        self.obs_mean = obs[train].mean(0).astype(np.float32)
        self.obs_std = np.maximum(obs[train].std(0), 1e-6).astype(np.float32)
        if not self._bounded.all():
            m, s = acts[train].mean(0), np.maximum(acts[train].std(0), 1e-6)
            self.act_centre = np.where(self._bounded, self.act_centre, m).astype(np.float32)
            self.act_scale = np.where(self._bounded, self.act_scale, s).astype(np.float32)
        X, A = self._norm_obs(obs), self._norm_act(acts)
        opt = th.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        gen = th.Generator().manual_seed(int(rng.integers(2**31)))
        train_t, val_t = th.as_tensor(train, device=self.device), th.as_tensor(val, device=self.device)
        result, best, best_state, stale = BCFitResult(n_train=len(train), n_val=n_val), float("inf"), None, 0
        for epoch in range(self.max_epochs):
            self.net.train()
            order = train_t[th.randperm(len(train), generator=gen).to(self.device)]
            losses = []
            for start in range(0, len(order), self.batch_size):
                b = order[start : start + self.batch_size]
                loss = self._loss(X[b], A[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()) * len(b))
            self.net.eval()
            with th.no_grad():
                v = float(self._loss(X[val_t], A[val_t]))
            result.train_loss.append(sum(losses) / len(train))
            result.val_loss.append(v)
            result.epochs = epoch + 1
            if v < best - 1e-3 * abs(best) or best_state is None:
                best, best_state, stale, result.best_epoch = v, {k: t.clone() for k, t in self.net.state_dict().items()}, 0, epoch
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.net.load_state_dict(best_state)
        self.net.eval()
        self.fitted = True
        return result

    # ------------------------------------------------------------------ acting
    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> Tuple[np.ndarray, None]:
        """SB3-style ``(actions, None)``: ``[B, *action_shape]`` for ``[B, obs_dim]`` observations,
        ``action_shape`` for a single ``[obs_dim]`` observation."""
        obs = np.asarray(observation, np.float32)
        single = obs.ndim == 1
        if single:
            obs = obs[None]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observation must have shape [{self.obs_dim}] or [B, {self.obs_dim}], got {np.shape(observation)}")
        with th.no_grad():
            mu, log_std = self._heads(self._norm_obs(obs))
            if not deterministic and log_std is not None:
                mu = mu + th.exp(log_std) * th.randn_like(mu)
        a = mu.cpu().numpy() * self.act_scale + self.act_centre
        lo, hi = self.action_space.low.reshape(-1), self.action_space.high.reshape(-1)
        a = np.where(self._bounded, np.clip(a, lo, hi), a).astype(self.action_space.dtype)
        a = a.reshape((len(obs),) + self.action_space.shape)
        return (a[0] if single else a), None

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """Deterministic action for one observation (a callable policy)."""
        return self.predict(observation, deterministic=True)[0]

    # ------------------------------------------------------------------ persistence
    def _config(self) -> Dict[str, Any]:
        return dict(hidden=list(self.hidden), loss=self.loss, lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                    max_epochs=self.max_epochs, patience=self.patience, holdout_ratio=self.holdout_ratio, seed=self.seed)

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write spaces, settings, normalisation and weights to one file (``torch.save``)."""
        th.save({"kind": "BehaviourCloning", "config": self._config(),
                 "spaces": [(s.low, s.high, s.shape, str(s.dtype)) for s in (self.observation_space, self.action_space)],
                 "norm": dict(obs_mean=self.obs_mean, obs_std=self.obs_std, act_centre=self.act_centre, act_scale=self.act_scale),
                 "fitted": self.fitted, "weights": self.net.state_dict()}, path)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"], device: Union[str, th.device] = "cpu") -> "BehaviourCloning":
        """Read a file written by :meth:`save`."""
        blob = th.load(path, map_location=device, weights_only=False)
        if not isinstance(blob, dict) or blob.get("kind") != "BehaviourCloning":
            raise ValueError(f"{os.fspath(path)!r} is not a BehaviourCloning file")
        obs_space, act_space = (spaces.Box(low, high, shape, np.dtype(dtype)) for low, high, shape, dtype in blob["spaces"])
        model = cls(obs_space, act_space, device=device, **blob["config"])
        model.net.load_state_dict(blob["weights"])
        for k, v in blob["norm"].items():
            setattr(model, k, np.asarray(v, np.float32))
        model.fitted = bool(blob["fitted"])
        model.net.eval()
        return model
