"""Successor-feature critic for the ``successor`` hypergradient estimator (DESIGN.md section 2).

For a reward model ``r_x(s, a, s') = out(w . f_theta(s, a, s'))`` (``w`` = the last linear layer,
``f_theta`` = its feature network, ``out`` an element-wise output transform), the soft-optimal
values satisfy (seed 003, "Absorb P into an expectation")

    grad_w V*(s)    = E_pi[ sum_t gamma^t grad_w r(s_t, a_t, s_{t+1}) | s_0 = s ]
    grad_w Q*(s, a) = E[ grad_w r(s, a, s') + gamma (1 - done) grad_w V*(s') ]

so ``Psi(s, a) ~ grad_w Q*(s, a)`` obeys a Bellman equation with vector "reward"
``grad_w r = out'(z) f_theta`` (successor features of the reward features).  ``Psi`` is trained by
TD exactly like a SAC critic (same discount, same Polyak target scheme), and the estimator uses

    grad_w (Q* - V*)(s, a) = Psi(s, a) - E_{a' ~ pi(.|s)} Psi(s, a')

(the entropy term of ``V*`` has zero gradient at the soft optimum: envelope theorem).  The bias
of the last layer is left out: ``grad_b (Q - V) = 0`` whenever episodes do not terminate, and
preference losses are invariant to a reward offset.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import NatureCNN, create_mlp
from torch import nn

__all__ = ["SuccessorCritic", "reward_head_gradient"]


def reward_head_gradient(reward_model: nn.Module, obs: th.Tensor, act: th.Tensor, next_obs: Optional[th.Tensor]) -> th.Tensor:
    """``grad_w r(s, a, s')`` for the reward model's last layer weights ``w`` (``[B, k]``).

    ``r = out(head(f))`` with ``head`` linear and ``out`` element-wise, so
    ``grad_w r = out'(head(f)) * f``.
    """
    with th.enable_grad():
        f = reward_model.features(obs, act, next_obs).detach()
        z = reward_model.head(f).squeeze(-1).detach().requires_grad_(True)
        out = reward_model.output(z)
        (dout,) = th.autograd.grad(out.sum(), z)
    return dout[:, None] * f


class SuccessorCritic(nn.Module):
    """``Psi(s, a) in R^k``: a vector critic estimating ``grad_w Q*(s, a)``.

    Continuous actions: ``Psi(s, a) = MLP([phi(s), a])``.  Discrete actions: ``Psi(s, .) = MLP(phi(s))``
    reshaped to ``[A, k]`` (all actions at once, so expectations over ``pi`` are exact).
    ``phi`` flattens vector observations or runs a Nature CNN on images.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        feature_dim: int,
        net_arch: Sequence[int] = (256, 256),
        activation_fn: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise TypeError(f"action_space must be Box or Discrete, got {action_space}")
        self.observation_space, self.action_space = observation_space, action_space
        self.feature_dim = int(feature_dim)
        self.discrete = isinstance(action_space, spaces.Discrete)
        if is_image_space(observation_space):
            self.obs_net: nn.Module = NatureCNN(observation_space, features_dim=256)
            obs_dim = 256
        else:
            self.obs_net = nn.Flatten()
            obs_dim = get_flattened_obs_dim(observation_space)
        if self.discrete:
            in_dim, out_dim = obs_dim, int(action_space.n) * self.feature_dim
        else:
            in_dim, out_dim = obs_dim + int(np.prod(action_space.shape)), self.feature_dim
        self.mlp = nn.Sequential(*create_mlp(in_dim, out_dim, list(net_arch), activation_fn))

    def _phi(self, obs: th.Tensor) -> th.Tensor:
        return self.obs_net(preprocess_obs(obs, self.observation_space, normalize_images=True).float())

    def all_actions(self, obs: th.Tensor) -> th.Tensor:
        """Discrete only: ``Psi(s, .)`` of shape ``[B, A, k]``."""
        out = self.mlp(self._phi(obs))
        return out.reshape(out.shape[0], int(self.action_space.n), self.feature_dim)

    def forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """``Psi(s, a)`` of shape ``[B, k]``; ``actions`` as the replay buffer stores them
        (scaled to [-1, 1] for Box, indices for Discrete)."""
        if self.discrete:
            idx = actions.long().reshape(-1)
            return self.all_actions(obs)[th.arange(idx.shape[0], device=idx.device), idx]
        return self.mlp(th.cat([self._phi(obs), actions.float()], dim=1))

    def expected(self, obs: th.Tensor, policy_sample: Callable[[th.Tensor], th.Tensor], probs: Optional[th.Tensor], n_samples: int = 1) -> th.Tensor:
        """``E_{a ~ pi(.|s)} Psi(s, a)``: exact over ``probs`` for Discrete, else the mean over
        ``n_samples`` actions drawn by ``policy_sample(obs)``."""
        if self.discrete:
            return (probs[..., None] * self.all_actions(obs)).sum(1)
        total = 0.0
        for _ in range(n_samples):
            total = total + self(obs, policy_sample(obs))
        return total / n_samples

    def advantage(self, obs, actions, policy_sample, probs, n_samples: int = 1) -> th.Tensor:
        """``Psi(s, a) - E_pi Psi(s, .)``: the estimate of ``grad_w (Q* - V*)(s, a)``."""
        return self(obs, actions) - self.expected(obs, policy_sample, probs, n_samples)


def td_target(
    successor_target: SuccessorCritic,
    grad_r: th.Tensor,
    next_obs: th.Tensor,
    dones: th.Tensor,
    discounts,
    policy_sample: Callable[[th.Tensor], th.Tensor],
    next_probs: Optional[th.Tensor],
) -> th.Tensor:
    """``grad_w r + gamma (1 - done) E_{a' ~ pi} Psi_target(s', a')`` (one sampled ``a'`` for Box)."""
    with th.no_grad():
        nxt = successor_target.expected(next_obs, policy_sample, next_probs, n_samples=1)
        return grad_r + (1.0 - dones) * discounts * nxt


def successor_loss(successor: SuccessorCritic, obs, actions, target) -> th.Tensor:
    """Mean squared TD error summed over the ``k`` feature dimensions."""
    return ((successor(obs, actions) - target) ** 2).sum(-1).mean()

