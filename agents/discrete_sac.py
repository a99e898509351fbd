"""Soft Actor-Critic for discrete action spaces (Christodoulou, 2019, arXiv:1910.07207).

:class:`DiscreteSAC` is a Stable-Baselines3 :class:`~stable_baselines3.common.off_policy_algorithm.OffPolicyAlgorithm`:
rollouts, replay buffer, callbacks, logging, ``save``/``load`` and ``predict`` are SB3's own.  Only the
networks (:mod:`agents.policies`) and the update rule differ from SB3's SAC.  With a finite action set
every expectation over actions is computed exactly instead of from a sampled action:

* soft state value     ``V(s) = sum_a pi(a|s) [Q(s, a) - alpha log pi(a|s)]``
* critic target        ``y = r + gamma^n (1 - done) V_target(s')`` with ``Q_target = min_k Q_target_k``
* critic loss          ``1/2 sum_k MSE(Q_k(s, a), y)`` (the ``1/2 sum_k`` convention of SB3's SAC)
* actor loss           ``E_s[ sum_a pi(a|s) (alpha log pi(a|s) - min_k Q_k(s, a)) ]``, i.e.
  ``alpha KL(pi || softmax(Q / alpha))`` up to a constant (``actor_loss="reverse_kl"``, SAC's), or
  ``alpha KL(softmax(Q / alpha) || pi)`` (``actor_loss="forward_kl"``).  Both are minimised by the
  same soft-greedy policy ``softmax(Q / alpha)``.  The reverse loss's gradient in the logits,
  ``pi (alpha log pi - Q - const)``, vanishes for actions whose probability has collapsed to about
  0, so a saturated actor cannot come back even when the critic and ``alpha`` ask it to.  The
  forward loss's gradient, ``alpha (pi - softmax(Q / alpha))``, does not vanish there.  The
  forward-KL actor objective for discrete SAC is one of those studied in "Dissecting Discrete Soft
  Actor-Critic: Limitations and Principled Alternatives" (arXiv:2509.09838).
* entropy-coef. loss   ``-E_s[ log(alpha) (H_target - H(pi(.|s))) ]`` with the exact entropy ``H``

``alpha`` is the entropy coefficient (``ent_coef``); in soft bilevel RL it is the temperature ``tau`` of
the lower-level soft MDP, available as :attr:`DiscreteSAC.alpha`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import get_parameters_by_name, polyak_update
from torch.nn import functional as F

from agents.policies import (
    CnnDiscreteSACPolicy,
    DiscreteActor,
    DiscreteCritic,
    DiscreteSACPolicy,
    MultiInputDiscreteSACPolicy,
    check_discrete_action_space,
)

__all__ = ["ACTOR_LOSSES", "DEFAULT_TARGET_ENTROPY_RATIO", "DiscreteSAC"]

#: accepted ``actor_loss`` values (module docstring)
ACTOR_LOSSES = ("reverse_kl", "forward_kl")

SelfDiscreteSAC = TypeVar("SelfDiscreteSAC", bound="DiscreteSAC")

#: ``target_entropy="auto"`` means ``DEFAULT_TARGET_ENTROPY_RATIO * log(n_actions)`` nats.
#: The paper's 0.98 keeps the policy almost uniform everywhere; 0.5 lets it commit to an action in the
#: states where that matters while keeping half of the maximal entropy on average.
DEFAULT_TARGET_ENTROPY_RATIO = 0.5


class DiscreteSAC(OffPolicyAlgorithm):
    """
    Soft Actor-Critic for ``Discrete`` action spaces (exact expectations over actions, twin soft Q
    critics, categorical actor, optional automatic entropy tuning).

    :param policy: The policy model to use (``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"``
        or a :class:`~agents.policies.DiscreteSACPolicy` subclass)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: learning rate for Adam (actor, critics and entropy coefficient);
        it can be a function of the current progress remaining (from 1 to 0)
    :param buffer_size: size of the replay buffer
    :param learning_starts: how many environment steps to collect (uniformly random actions) before learning
    :param batch_size: Minibatch size for each gradient update
    :param tau: the soft update coefficient ("Polyak update", between 0 and 1) of the target critics
    :param gamma: the discount factor
    :param train_freq: Update the model every ``train_freq`` steps, or a tuple like ``(5, "step")``
        or ``(2, "episode")``.
    :param gradient_steps: How many gradient steps to do after each rollout (``-1``: as many as
        environment steps collected during the rollout)
    :param replay_buffer_class: Replay buffer class to use; if ``None`` SB3 selects one
    :param replay_buffer_kwargs: Keyword arguments to pass to the replay buffer on creation
        (``optimize_memory_usage=True`` needs ``dict(handle_timeout_termination=False)``)
    :param optimize_memory_usage: Enable the memory efficient variant of SB3's replay buffer
    :param n_steps: n-step returns with SB3's ``NStepReplayBuffer`` when > 1 (SB3 >= 2.7)
    :param ent_coef: Entropy coefficient ``alpha``. A float keeps it fixed; ``"auto"`` learns it
        (initial value 1), ``"auto_0.1"`` learns it from 0.1.
    :param target_update_interval: Polyak-update the target critics every ``target_update_interval``
        gradient steps (counted over the whole training run)
    :param target_entropy: target of the mean policy entropy (in nats) when learning ``ent_coef``:
        a float, ``"auto"`` (``DEFAULT_TARGET_ENTROPY_RATIO * log(n_actions)``) or ``"auto_<ratio>"``
        (``ratio * log(n_actions)``, e.g. ``"auto_0.98"`` as in Christodoulou 2019)
    :param actor_loss: ``"reverse_kl"`` (SAC's actor loss, the default) or ``"forward_kl"``
        (``alpha KL(softmax(Q / alpha) || pi)``: the same minimiser, with a gradient that does not
        vanish when the actor has collapsed onto one action; see the module docstring)
    :param stats_window_size: Window size for the rollout logging (number of episodes averaged)
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
        (``net_arch``, ``n_critics``, ``share_features_extractor``, ...)
    :param verbose: Verbosity level: 0 no output, 1 info messages, 2 debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run (``"auto"``: GPU if possible)
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": DiscreteSACPolicy,
        "CnnPolicy": CnnDiscreteSACPolicy,
        "MultiInputPolicy": MultiInputDiscreteSACPolicy,
    }
    policy: DiscreteSACPolicy
    actor: DiscreteActor
    critic: DiscreteCritic
    critic_target: DiscreteCritic
    action_space: spaces.Discrete

    def __init__(
        self,
        policy: str | type[DiscreteSACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        ent_coef: str | float = "auto",
        target_update_interval: int = 1,
        target_entropy: str | float = "auto",
        actor_loss: str = "reverse_kl",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        # Only forward n_steps when used, so that SB3 releases without n-step support keep working
        n_step_kwargs = {} if n_steps == 1 else {"n_steps": n_steps}
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size,
            learning_starts,
            batch_size,
            tau,
            gamma,
            train_freq,
            gradient_steps,
            action_noise=None,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            sde_support=False,
            support_multi_env=True,
            **n_step_kwargs,
        )
        # Checked here (not through SB3's assert) to raise a TypeError naming the space
        if getattr(self, "action_space", None) is not None:  # None/absent while loading
            check_discrete_action_space(self.action_space, type(self).__name__)
        if target_update_interval < 1:
            raise ValueError(f"target_update_interval must be >= 1, got {target_update_interval}")
        if actor_loss not in ACTOR_LOSSES:
            raise ValueError(f"actor_loss must be one of {ACTOR_LOSSES}, got {actor_loss!r}")
        self.actor_loss = actor_loss

        self.target_entropy = target_entropy
        self.log_ent_coef: th.Tensor | None = None
        self.ent_coef = ent_coef
        self.target_update_interval = target_update_interval
        self.ent_coef_optimizer: th.optim.Adam | None = None

        if _init_setup_model:
            self._setup_model()

    # ------------------------------------------------------------------ setup
    def _setup_model(self) -> None:
        check_discrete_action_space(self.action_space, type(self).__name__)
        super()._setup_model()
        self._create_aliases()
        self.batch_norm_stats = get_parameters_by_name(self.critic, ["running_"])
        self.batch_norm_stats_target = get_parameters_by_name(self.critic_target, ["running_"])

        self.target_entropy = self._parse_target_entropy(self.target_entropy)

        if isinstance(self.ent_coef, str):
            if not self.ent_coef.startswith("auto"):
                raise ValueError(f"ent_coef must be a float, 'auto' or 'auto_<init>', got {self.ent_coef!r}")
            init_value = 1.0
            if "_" in self.ent_coef:
                init_value = float(self.ent_coef.split("_", 1)[1])
                if not init_value > 0.0:
                    raise ValueError(f"The initial value of ent_coef must be > 0, got {init_value}")
            # Optimise log(alpha) so that alpha stays positive
            self.log_ent_coef = th.log(th.ones(1, device=self.device) * init_value).requires_grad_(True)
            self.ent_coef_optimizer = th.optim.Adam([self.log_ent_coef], lr=self.lr_schedule(1))
        else:
            if float(self.ent_coef) < 0.0:
                raise ValueError(f"ent_coef must be >= 0, got {self.ent_coef}")
            if float(self.ent_coef) == 0.0 and self.actor_loss == "forward_kl":
                raise ValueError("actor_loss='forward_kl' needs ent_coef > 0: its target softmax(Q / ent_coef) is undefined at 0")
            self.ent_coef_tensor = th.tensor(float(self.ent_coef), device=self.device)

    def _parse_target_entropy(self, target_entropy: str | float) -> float:
        max_entropy = math.log(self.action_space.n)
        if isinstance(target_entropy, str):
            if target_entropy == "auto":
                ratio = DEFAULT_TARGET_ENTROPY_RATIO
            elif target_entropy.startswith("auto_"):
                ratio = float(target_entropy.split("_", 1)[1])
            else:
                raise ValueError(f"target_entropy must be a float, 'auto' or 'auto_<ratio>', got {target_entropy!r}")
            return float(ratio * max_entropy)
        value = float(target_entropy)
        if isinstance(self.ent_coef, str) and not 0.0 <= value < max_entropy:
            warnings.warn(
                f"target_entropy={value:.4g} is outside [0, log(n_actions)={max_entropy:.4g}): "
                "the learned entropy coefficient will drift without bound.",
                stacklevel=3,
            )
        return value

    def _create_aliases(self) -> None:
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target

    # ------------------------------------------------------- soft quantities
    def _ent_coef_tensor(self) -> th.Tensor:
        """Current entropy coefficient as a detached 0-d tensor."""
        if self.log_ent_coef is not None:
            return th.exp(self.log_ent_coef.detach()).reshape(())
        return self.ent_coef_tensor

    @property
    def alpha(self) -> float:
        """Current entropy coefficient (the soft-MDP temperature ``tau``) as a float."""
        return float(self._ent_coef_tensor().item())

    def ent_coef_value(self) -> float:
        """Same as :attr:`alpha`."""
        return self.alpha

    def _obs_to_tensor(self, obs: np.ndarray | dict[str, np.ndarray] | PyTorchObs) -> PyTorchObs:
        if isinstance(obs, th.Tensor):
            return obs.to(self.device)
        if isinstance(obs, dict) and all(isinstance(v, th.Tensor) for v in obs.values()):
            return {k: v.to(self.device) for k, v in obs.items()}
        obs_tensor, _ = self.policy.obs_to_tensor(obs)  # adds the batch dimension for a single obs
        return obs_tensor

    def soft_values(
        self,
        obs: np.ndarray | dict[str, np.ndarray] | PyTorchObs,
        use_target: bool = False,
        with_grad: bool = False,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Soft quantities of the current policy on a batch of observations.

        :param obs: observations (numpy, as from a VecEnv, or already-preprocessed-for-SB3 tensors)
        :param use_target: use the target critics instead of the online ones
        :param with_grad: keep the autograd graph (to actor and critic parameters); default no grad
        :return: ``(Q_min[B, A], V[B], pi[B, A])`` with ``Q_min = min_k Q_k(s, .)`` and
            ``V(s) = sum_a pi(a|s) (Q_min(s, a) - alpha log pi(a|s))``
        """
        obs_tensor = self._obs_to_tensor(obs)
        critic = self.critic_target if use_target else self.critic
        with th.set_grad_enabled(with_grad):
            probs, log_probs = self.actor.action_probs(obs_tensor)
            q_min = critic.min_q(obs_tensor)
            values = (probs * (q_min - self._ent_coef_tensor() * log_probs)).sum(dim=-1)
        return q_min, values, probs

    def compute_critic_target(
        self,
        rewards: th.Tensor,
        next_observations: PyTorchObs,
        dones: th.Tensor,
        discounts: th.Tensor | float | None = None,
        ent_coef: th.Tensor | float | None = None,
    ) -> th.Tensor:
        """Soft TD target ``y = r + discount (1 - done) sum_a' pi(a'|s') [min_k Q_target_k(s', a') - alpha log pi(a'|s')]``.

        :param rewards: ``[B, 1]`` (or ``[B]``)
        :param next_observations: batch of next observations (tensors, as sampled from the buffer)
        :param dones: ``[B, 1]`` (or ``[B]``) termination flags (timeouts already handled by the buffer)
        :param discounts: ``gamma`` (default), or per-sample ``gamma^n`` for n-step returns
        :param ent_coef: ``alpha`` (default: the current entropy coefficient)
        :return: ``[B, 1]`` targets, without gradient
        """
        if discounts is None:
            discounts = self.gamma
        if ent_coef is None:
            ent_coef = self._ent_coef_tensor()
        with th.no_grad():
            next_probs, next_log_probs = self.actor.action_probs(next_observations)
            next_q = self.critic_target.min_q(next_observations)
            next_v = (next_probs * (next_q - ent_coef * next_log_probs)).sum(dim=-1, keepdim=True)
            return rewards.reshape(-1, 1) + (1.0 - dones.reshape(-1, 1)) * discounts * next_v

    # ---------------------------------------------------------------- train
    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.ent_coef_optimizer is not None:
            optimizers.append(self.ent_coef_optimizer)
        self._update_learning_rate(optimizers)

        ent_coef_losses, ent_coefs, entropies = [], [], []
        actor_losses, critic_losses = [], []

        for gradient_step in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = getattr(replay_data, "discounts", None)
            if discounts is None:
                discounts = self.gamma
            ent_coef = self._ent_coef_tensor()
            ent_coefs.append(ent_coef.item())

            # Critics
            target_q = self.compute_critic_target(
                replay_data.rewards, replay_data.next_observations, replay_data.dones, discounts, ent_coef
            )
            actions = replay_data.actions.long().reshape(-1, 1)
            current_q = self.critic(replay_data.observations)
            critic_loss = 0.5 * sum(F.mse_loss(q.gather(1, actions), target_q) for q in current_q)
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.item())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()

            # Actor: exact expectation over actions; the critics are constants here
            probs, log_probs = self.actor.action_probs(replay_data.observations)
            with th.no_grad():
                min_q = self.critic.min_q(replay_data.observations)
            actor_loss = self._actor_objective(probs, log_probs, min_q, ent_coef)
            actor_losses.append(actor_loss.item())
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()

            # Entropy coefficient: raise alpha when the policy entropy is below target, lower it above
            entropy = -(probs.detach() * log_probs.detach()).sum(dim=-1)
            entropies.append(entropy.mean().item())
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                assert isinstance(self.target_entropy, float)
                ent_coef_loss = -(self.log_ent_coef * (self.target_entropy - entropy)).mean()
                ent_coef_losses.append(ent_coef_loss.item())
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()

            # Target critics, every `target_update_interval` gradient steps of the whole run
            if (self._n_updates + gradient_step + 1) % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                # Copy running statistics (batch norm)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))
        self.logger.record("train/entropy", np.mean(entropies))
        if len(ent_coef_losses) > 0:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))

    def _actor_objective(self, probs: th.Tensor, log_probs: th.Tensor, min_q: th.Tensor, ent_coef: th.Tensor) -> th.Tensor:
        """The actor loss of ``actor_loss`` (module docstring), averaged over the batch."""
        if self.actor_loss == "reverse_kl":
            return (probs * (ent_coef * log_probs - min_q)).sum(dim=-1).mean()
        target_log_probs = th.log_softmax(min_q / ent_coef, dim=-1)
        return (ent_coef * target_log_probs.exp() * (target_log_probs - log_probs)).sum(dim=-1).mean()

    def learn(
        self: SelfDiscreteSAC,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DiscreteSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfDiscreteSAC:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    # ------------------------------------------------------------ save/load
    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "actor", "critic", "critic_target"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        # "policy" holds actor, critic and critic_target weights
        state_dicts = ["policy", "actor.optimizer", "critic.optimizer"]
        if self.ent_coef_optimizer is not None:
            saved_pytorch_variables = ["log_ent_coef"]
            state_dicts.append("ent_coef_optimizer")
        else:
            saved_pytorch_variables = ["ent_coef_tensor"]
        return state_dicts, saved_pytorch_variables
