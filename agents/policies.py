"""Policies for discrete-action Soft Actor-Critic (:class:`agents.discrete_sac.DiscreteSAC`).

The networks follow the layout of Stable-Baselines3's SAC policies, adapted to a finite action set
``A = {0, ..., n-1}``:

* :class:`DiscreteActor` maps an observation to categorical logits over *all* actions, so the whole
  distribution ``pi(.|s)`` (and ``log pi(.|s)``) is available in closed form;
* :class:`DiscreteCritic` holds ``n_critics`` soft Q networks, each mapping an observation to the
  vector ``Q_k(s, .)`` of values of every action (no action input);
* :class:`DiscreteSACPolicy` owns the actor, the critic and a Polyak-averaged copy ``critic_target``.

All of them are built from SB3 machinery: :class:`~stable_baselines3.common.policies.BasePolicy`,
the features extractors (:class:`~stable_baselines3.common.torch_layers.FlattenExtractor`,
:class:`~stable_baselines3.common.torch_layers.NatureCNN`, ...) and
:func:`~stable_baselines3.common.torch_layers.create_mlp`.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import CategoricalDistribution
from stable_baselines3.common.policies import BaseModel, BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
    get_actor_critic_arch,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn

__all__ = [
    "CnnDiscreteSACPolicy",
    "DiscreteActor",
    "DiscreteCritic",
    "DiscreteSACPolicy",
    "MultiInputDiscreteSACPolicy",
    "check_discrete_action_space",
]


def check_discrete_action_space(action_space: spaces.Space, who: str = "DiscreteSAC") -> spaces.Discrete:
    """Return ``action_space`` if it is a :class:`gymnasium.spaces.Discrete`, raise ``TypeError`` otherwise.

    ``Discrete`` spaces with a non-zero ``start`` are rejected too: SB3's replay buffer and ``predict``
    work with the indices ``0..n-1``.
    """
    if not isinstance(action_space, spaces.Discrete):
        raise TypeError(
            f"{who} only supports gymnasium.spaces.Discrete action spaces, got {action_space!r} "
            f"({type(action_space).__name__}). Use SB3's SAC for continuous (Box) actions."
        )
    if int(action_space.start) != 0:
        raise TypeError(f"{who} needs a Discrete action space starting at 0, got {action_space!r}.")
    return action_space


class DiscreteActor(BasePolicy):
    """Categorical actor: ``obs -> logits[B, n_actions]``.

    :param observation_space: Observation space
    :param action_space: Discrete action space
    :param net_arch: Hidden layer sizes of the MLP after the features extractor
    :param features_extractor: Network to extract features (a CNN for images, ``nn.Flatten`` otherwise)
    :param features_dim: Number of features
    :param activation_fn: Activation function
    :param normalize_images: Whether to divide image observations by 255
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
    ):
        check_discrete_action_space(action_space, type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=False,
        )
        self.net_arch = net_arch
        self.features_dim = features_dim
        self.activation_fn = activation_fn
        self.n_actions = int(action_space.n)
        self.logits_net = nn.Sequential(*create_mlp(features_dim, self.n_actions, net_arch, activation_fn))
        self.action_dist = CategoricalDistribution(self.n_actions)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                features_dim=self.features_dim,
                activation_fn=self.activation_fn,
                features_extractor=self.features_extractor,
            )
        )
        return data

    def action_logits(self, obs: PyTorchObs) -> th.Tensor:
        """Unnormalised log-probabilities, shape ``[B, n_actions]``."""
        features = self.extract_features(obs, self.features_extractor)
        return self.logits_net(features)

    def action_probs(self, obs: PyTorchObs) -> tuple[th.Tensor, th.Tensor]:
        """``(pi(.|s), log pi(.|s))``, both of shape ``[B, n_actions]`` (log-softmax for stability)."""
        log_probs = th.log_softmax(self.action_logits(obs), dim=-1)
        return log_probs.exp(), log_probs

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        """Actions ``[B]``: the most likely action if ``deterministic``, else a sample of ``pi(.|s)``."""
        return self.action_dist.actions_from_params(self.action_logits(obs), deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self(observation, deterministic)


class DiscreteCritic(BaseModel):
    """Twin (or ``n_critics``) soft Q networks ``obs -> Q_k(s, .)`` of shape ``[B, n_actions]``.

    :param share_features_extractor: If True, the features extractor belongs to the actor: it is run
        without gradient here, so it is trained by the actor loss only (as in SB3's SAC).
    """

    action_space: spaces.Discrete
    features_extractor: BaseFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = False,
    ):
        check_discrete_action_space(action_space, type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
        )
        if n_critics < 1:
            raise ValueError(f"n_critics must be >= 1, got {n_critics}")
        self.n_actions = int(action_space.n)
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        self.q_networks: list[nn.Module] = []
        for idx in range(n_critics):
            q_net = nn.Sequential(*create_mlp(features_dim, self.n_actions, net_arch, activation_fn))
            self.add_module(f"qf{idx}", q_net)
            self.q_networks.append(q_net)

    def forward(self, obs: PyTorchObs) -> tuple[th.Tensor, ...]:
        """One ``[B, n_actions]`` tensor per critic."""
        with th.set_grad_enabled(th.is_grad_enabled() and not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        return tuple(q_net(features) for q_net in self.q_networks)

    def min_q(self, obs: PyTorchObs) -> th.Tensor:
        """Element-wise minimum over the critics, ``[B, n_actions]`` (clipped double-Q)."""
        return th.min(th.stack(self(obs), dim=0), dim=0).values


class DiscreteSACPolicy(BasePolicy):
    """Actor, critic and target critic for discrete SAC (``"MlpPolicy"``).

    :param observation_space: Observation space
    :param action_space: Discrete action space
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: Hidden layers: a list shared by actor and critics, or ``dict(pi=[...], qf=[...])``.
        Default ``[256, 256]``.
    :param activation_fn: Activation function
    :param features_extractor_class: Features extractor to use (``FlattenExtractor`` here)
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor
    :param normalize_images: Whether to divide image observations by 255
    :param optimizer_class: The optimizer to use (``th.optim.Adam`` by default)
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, for the optimizer
    :param n_critics: Number of soft Q networks (2: clipped double-Q)
    :param share_features_extractor: Whether actor and critic share one features extractor
        (trained by the actor loss only). Default False: each has its own.
    """

    action_space: spaces.Discrete
    actor: DiscreteActor
    critic: DiscreteCritic
    critic_target: DiscreteCritic

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
    ):
        check_discrete_action_space(action_space, type(self).__name__)
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=False,
            normalize_images=normalize_images,
        )
        if net_arch is None:
            net_arch = [256, 256]
        actor_arch, critic_arch = get_actor_critic_arch(net_arch)

        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.n_critics = n_critics
        self.share_features_extractor = share_features_extractor
        net_args = {
            "observation_space": self.observation_space,
            "action_space": self.action_space,
            "activation_fn": self.activation_fn,
            "normalize_images": normalize_images,
        }
        self.actor_kwargs = {**net_args, "net_arch": actor_arch}
        self.critic_kwargs = {
            **net_args,
            "net_arch": critic_arch,
            "n_critics": n_critics,
            "share_features_extractor": share_features_extractor,
        }
        self._build(lr_schedule)

    def _build(self, lr_schedule: Schedule) -> None:
        self.actor = self.make_actor()
        self.actor.optimizer = self.optimizer_class(
            self.actor.parameters(),
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )
        if self.share_features_extractor:
            self.critic = self.make_critic(features_extractor=self.actor.features_extractor)
            # The shared extractor is trained by the actor loss only
            critic_parameters = [p for name, p in self.critic.named_parameters() if "features_extractor" not in name]
        else:
            self.critic = self.make_critic(features_extractor=None)
            critic_parameters = list(self.critic.parameters())
        # The target never shares its features extractor
        self.critic_target = self.make_critic(features_extractor=None)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.set_training_mode(False)
        self.critic_target.requires_grad_(False)

        self.critic.optimizer = self.optimizer_class(
            critic_parameters,
            lr=lr_schedule(1),  # type: ignore[call-arg]
            **self.optimizer_kwargs,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                n_critics=self.n_critics,
                share_features_extractor=self.share_features_extractor,
                lr_schedule=self._dummy_schedule,  # not needed to load the policy alone
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
            )
        )
        return data

    def make_actor(self, features_extractor: BaseFeaturesExtractor | None = None) -> DiscreteActor:
        actor_kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return DiscreteActor(**actor_kwargs).to(self.device)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> DiscreteCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return DiscreteCritic(**critic_kwargs).to(self.device)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self._predict(obs, deterministic=deterministic)

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.actor(observation, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        """Train/eval mode for actor and critic (the target critic always stays in eval mode)."""
        self.actor.set_training_mode(mode)
        self.critic.set_training_mode(mode)
        self.training = mode


MlpPolicy = DiscreteSACPolicy


class CnnDiscreteSACPolicy(DiscreteSACPolicy):
    """:class:`DiscreteSACPolicy` with a :class:`~stable_baselines3.common.torch_layers.NatureCNN`
    features extractor (``"CnnPolicy"``; image observations, e.g. uint8 ``(C, H, W)`` with H, W >= 36)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        **kwargs: Any,
    ):
        super().__init__(observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs)


CnnPolicy = CnnDiscreteSACPolicy


class MultiInputDiscreteSACPolicy(DiscreteSACPolicy):
    """:class:`DiscreteSACPolicy` for ``Dict`` observations, with a
    :class:`~stable_baselines3.common.torch_layers.CombinedExtractor` (``"MultiInputPolicy"``)."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        **kwargs: Any,
    ):
        super().__init__(observation_space, action_space, lr_schedule, features_extractor_class=features_extractor_class, **kwargs)


MultiInputPolicy = MultiInputDiscreteSACPolicy
