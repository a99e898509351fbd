"""Parameterised reward tables ``x -> r_x`` for tabular problems.

The hypergradient estimators only ever need two things from a reward: its table ``r_x(s, a)``
and vector-Jacobian products ``sum_{s,a} W[s,a] grad_x r_x(s,a)``.  Both a linear reward over
features and an arbitrary differentiable torch module provide them, so every estimator in
:mod:`birl.hypergrad` works with either.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch.func import functional_call

__all__ = ["RewardFunction", "LinearReward", "ModuleReward", "as_numpy"]


def as_numpy(a, name: str) -> np.ndarray:
    """Convert array-likes (including torch tensors) to float64 numpy, naming ``name`` on error."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    try:
        out = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(a).__name__}") from err
    return out


class RewardFunction:
    """A differentiable map from the outer variable ``x`` (a flat vector) to ``r_x`` of shape (S, A)."""

    n_params: int
    shape: Tuple[int, int]

    def torch(self, x: torch.Tensor) -> torch.Tensor:
        """Reward table as a torch tensor, differentiable in ``x``."""
        raise NotImplementedError

    def numpy(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.torch(torch.as_tensor(x, dtype=torch.float64)).numpy()

    def vjp(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum_{s,a} weights[s,a] * grad_x r_x(s,a)``."""
        xt = torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_(True)
        r = self.torch(xt)
        (g,) = torch.autograd.grad(r, xt, grad_outputs=torch.as_tensor(weights, dtype=torch.float64))
        return g.numpy()

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """Full Jacobian ``grad_x r_x`` of shape ``(S, A, n_params)`` (for tests and small problems)."""
        xt = torch.as_tensor(x, dtype=torch.float64)
        return torch.autograd.functional.jacobian(self.torch, xt).numpy()


class LinearReward(RewardFunction):
    """``r_x(s, a) = features[s, a] @ x`` with ``features`` of shape ``(S, A, d)``."""

    def __init__(self, features) -> None:
        features = as_numpy(features, "features")
        if features.ndim != 3:
            raise ValueError(f"features must have shape (S, A, d), got {features.shape}")
        if not np.all(np.isfinite(features)):
            raise ValueError("features contains NaN or inf")
        self.features = features
        self._features_t = torch.as_tensor(features)
        self.shape = features.shape[:2]
        self.n_params = features.shape[2]

    def torch(self, x: torch.Tensor) -> torch.Tensor:
        return self._features_t.to(x.dtype) @ x

    def numpy(self, x: np.ndarray) -> np.ndarray:
        return self.features @ x

    def vjp(self, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return np.einsum("sad,sa->d", self.features, weights)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        return self.features.copy()


class ModuleReward(RewardFunction):
    """A torch module as reward: ``x`` is the flattened vector of the module's parameters.

    Args:
        module: maps inputs of shape ``(S*A, k)`` to ``(S*A,)`` or ``(S*A, 1)``.
        n_states, n_actions: table shape.
        inputs: ``(S, A, k)`` inputs; default the one-hot concatenation of ``s`` and ``a``.
    """

    def __init__(self, module: torch.nn.Module, n_states: int, n_actions: int, inputs: Optional[np.ndarray] = None):
        self.module = module.double()
        self.shape = (n_states, n_actions)
        if inputs is None:
            eye_s, eye_a = np.eye(n_states), np.eye(n_actions)
            inputs = np.concatenate(
                [np.repeat(eye_s[:, None], n_actions, 1), np.repeat(eye_a[None], n_states, 0)], axis=-1
            )
        inputs = as_numpy(inputs, "reward_inputs")
        if inputs.ndim != 3 or inputs.shape[:2] != self.shape:
            raise ValueError(f"reward_inputs must have shape ({n_states}, {n_actions}, k), got {inputs.shape}")
        self._inputs = torch.as_tensor(inputs.reshape(n_states * n_actions, -1))
        self._names = [n for n, _ in module.named_parameters()]
        self._shapes = [p.shape for _, p in module.named_parameters()]
        self._sizes = [p.numel() for _, p in module.named_parameters()]
        self.n_params = int(sum(self._sizes))
        try:
            out = self.torch(torch.as_tensor(self.initial_x()))
        except RuntimeError as err:
            raise ValueError(f"module cannot evaluate reward inputs of shape {tuple(self._inputs.shape)}: {err}") from err
        if out.shape != self.shape:
            raise ValueError(f"module output must be one value per (s, a); got shape {tuple(out.shape)}")

    def initial_x(self) -> np.ndarray:
        """The module's current parameters, flattened (a natural starting point for ``x``)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).double().numpy()

    def torch(self, x: torch.Tensor) -> torch.Tensor:
        params = {}
        offset = 0
        for name, shape, size in zip(self._names, self._shapes, self._sizes):
            params[name] = x[offset : offset + size].reshape(shape).to(torch.float64)
            offset += size
        out = functional_call(self.module, params, (self._inputs,))
        return out.reshape(self.shape)
