"""One reward model meta-learned across a family of deep-RL tasks (seed 004, the deep-RL half).

Seed 004 ("Generalizing reward modeling for out-of-distribution preference learning", section
3.2, eqs. (11)-(12)) learns ONE reward model ``r_x`` shared by K training tasks; every task ``T``
has its own policy, soft-optimal for ``r_x`` in that task's MDP, and the outer loss is the mean
over tasks of each task's preference loss under its own policy:

    min_x  L(x) = (1/K) sum_k f_k(x, pi*_k(x)),     pi*_k(x) soft-optimal for r_x in task k.

The tabular version with exact hypergradients is :mod:`birl.meta`.  Here each task is a
Gymnasium env (e.g. Pendulum-v1 with its own mass and length: the TRUE reward is the same
function of state and action in every variant, only the dynamics differ) and has its own
bilevel agent (:class:`agents.sobirl.SoBiRL`: SB3's SAC on the shared learned reward plus the
SoBiRL outer step on that task's preferences, labelled by that task's TRUE reward).

Stochastic meta-hypergradient.  ``grad L = (1/K) sum_k grad phi_k`` and an outer step of agent
``k`` is a (first-order SoBiRL) step along its own task's term ``grad phi_k``.  So when the K
agents hold the SAME reward-model object and the SAME optimiser and their ``learn`` calls are
interleaved in chunks (round-robin, ``outer_freq`` env steps each by default), the sequence of
reward updates is stochastic gradient descent on the mean ``L`` (seed 004, Algorithm 1, draws one
task per outer step; here the tasks are visited in turn).  With :class:`agents.sobirl.DRLHF`
agents (no second hypergradient term) the same loop is a plain multi-task fit of the reward on
the preferences of all tasks (SGD on the pooled Bradley-Terry loss with equal task weights).

What is shared and what is not:

* shared: the reward model (its parameters and any normaliser buffers) and its Adam optimiser
  (one set of moment estimates for the whole meta objective);
* per task: SAC (actor, critics, entropy coefficient), the successor critic of the ``successor``
  estimator (``Psi ~ grad_w Q`` depends on the task's dynamics), the replay buffer, the
  preference dataset, the teacher and the query budget ``n_queries``.

Every env step of every agent is paid by the current shared model (each agent's
``VecParameterisedReward`` holds the shared object); after an outer step the stepping agent
relabels its own buffer (as in :class:`agents.sobirl.SoBiRL`), and before each chunk the learner
relabels the next agent's buffer with the current model, since other tasks' outer steps changed
it meanwhile.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, List, Optional, Sequence, Type, Union

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.vec_env import VecEnv

from agents.sobirl import BilevelMixin, SoBiRL, budgeted_schedule
from birl.feedback import QuerySchedule, SyntheticTeacher
from birl.reward_models import MlpReward, RewardModel, load_reward_model

__all__ = [
    "MetaRewardLearner",
    "pendulum_variant_id",
    "make_pendulum_variant",
]

TaskLike = Union[gym.Env, VecEnv, str]


# ------------------------------------------------------------------ Pendulum variants
def _pendulum_with(m: float, l: float, **kwargs: Any) -> gym.Env:
    """Gymnasium's ``PendulumEnv`` with mass ``m`` and length ``l`` (its constructor takes only
    ``g``; ``m`` and ``l`` are plain attributes read at every step)."""
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    env = PendulumEnv(**kwargs)
    env.m, env.l = float(m), float(l)
    return env


def pendulum_variant_id(m: float = 1.0, l: float = 1.0) -> str:
    """Register (once) and return a Gymnasium id for Pendulum-v1 with mass ``m`` and length ``l``.

    The id (``"PendulumVariant-m<m>-l<l>-v1"``) works with ``gymnasium.make`` and with helpers
    that take an env id (e.g. :func:`agents.quickstart.heldout_preference_accuracy`); the env
    has Pendulum-v1's 200-step time limit and its TRUE reward ``-(theta^2 + 0.1 thetadot^2 +
    0.001 u^2)``, which does not depend on ``m`` or ``l``.
    """
    for name, value in (("m", m), ("l", l)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    env_id = f"PendulumVariant-m{float(m):g}-l{float(l):g}-v1"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=_pendulum_with, kwargs={"m": float(m), "l": float(l)}, max_episode_steps=200)
    return env_id


def make_pendulum_variant(m: float = 1.0, l: float = 1.0, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` of :func:`pendulum_variant_id` (``kwargs`` such as ``render_mode`` go through)."""
    return gym.make(pendulum_variant_id(m, l), **kwargs)


# ------------------------------------------------------------------ the meta learner
def _as_task(task: Any, index: int) -> Union[gym.Env, VecEnv]:
    if isinstance(task, str):
        return gym.make(task)
    if isinstance(task, (gym.Env, VecEnv)):
        return task
    raise TypeError(f"tasks[{index}] must be a gymnasium.Env, an SB3 VecEnv or an env id string, got {type(task).__name__}")


class MetaRewardLearner:
    """One reward model shared by K bilevel agents, one per training task (seed 004, eqs. (11)-(12)).

    Args:
        tasks: the K training tasks: gymnasium envs, SB3 VecEnvs or env ids, all with the same
            observation and action spaces; each returns its TRUE reward (the agents wrap them).
        algo: a bilevel agent class (:class:`agents.sobirl.SoBiRL` for the meta hypergradient,
            :class:`agents.sobirl.DRLHF` for the pooled multi-task baseline, or any other
            subclass of :class:`agents.sobirl.BilevelMixin` with a matching action space).
        policy: the inner learner's policy (``"MlpPolicy"``).
        reward_model: the shared :class:`birl.reward_models.RewardModel` (default: ``MlpReward``
            with two hidden layers of 64, as the agents build by default).
        feedback: ``None`` (a noiseless :class:`birl.feedback.SyntheticTeacher` per task, seeded
            ``seed + k``), a sequence of K feedback sources (one per task, distinct objects), or a
            callable ``k -> source``.
        seed: agent ``k`` gets ``seed + k`` (``None``: unseeded).
        chunk_steps: env steps an agent runs before the next one takes over (default: the
            agents' ``outer_freq``, so each turn holds about one outer step).
        **agent_kwargs: every other argument of ``algo`` (``n_queries`` is the budget PER task,
            ``outer_freq``, ``reward_lr``, SAC's arguments, ...); ``storm_mu`` is refused (a
            STORM correction would mix iterates of different tasks).

    Attributes:
        agents: the K agents (``agents[k].env`` is task ``k`` wrapped with the shared reward).
        reward_model, reward_optimizer: the shared objects (``agents[k].reward_model is
            reward_model`` for every ``k``).
    """

    def __init__(
        self,
        tasks: Sequence[TaskLike],
        algo: Type[BilevelMixin] = SoBiRL,
        policy: Union[str, Type] = "MlpPolicy",
        reward_model: Optional[RewardModel] = None,
        feedback: Union[None, Sequence[Any], Callable[[int], Any]] = None,
        seed: Optional[int] = None,
        chunk_steps: Optional[int] = None,
        **agent_kwargs: Any,
    ) -> None:
        if isinstance(tasks, (str, gym.Env, VecEnv)) or not isinstance(tasks, Sequence):
            raise TypeError(f"tasks must be a list of envs or env ids, got {type(tasks).__name__}")
        if len(tasks) == 0:
            raise ValueError("tasks must hold at least one training task, got an empty sequence")
        if not (isinstance(algo, type) and issubclass(algo, BilevelMixin)):
            raise TypeError(f"algo must be a bilevel agent class (SoBiRL, DRLHF, ...), got {algo!r}")
        if agent_kwargs.get("storm_mu") is not None:
            raise ValueError("storm_mu is not supported by MetaRewardLearner: STORM's correction would mix tasks' iterates")
        if "feedback" in agent_kwargs or "env" in agent_kwargs:
            raise TypeError("pass the tasks as `tasks` and the feedback as `feedback`, not through agent_kwargs")
        if seed is not None and (isinstance(seed, bool) or int(seed) != seed):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        if chunk_steps is not None and (
            isinstance(chunk_steps, bool) or not isinstance(chunk_steps, (int, np.integer)) or chunk_steps < 1
        ):
            raise ValueError(f"chunk_steps must be a positive integer or None, got {chunk_steps!r}")
        envs = [_as_task(task, k) for k, task in enumerate(tasks)]
        for k, env in enumerate(envs[1:], start=1):
            for what in ("observation_space", "action_space"):
                if getattr(env, what) != getattr(envs[0], what):
                    raise ValueError(
                        f"tasks[{k}] has {what} {getattr(env, what)} but tasks[0] has {getattr(envs[0], what)}: "
                        "one reward model needs the same spaces in every task"
                    )
        sources = self._feedback_sources(feedback, len(envs), seed)
        if reward_model is None:
            reward_model = MlpReward.from_spaces(envs[0].observation_space, envs[0].action_space, hidden=(64, 64))
        elif not isinstance(reward_model, RewardModel):
            raise TypeError(f"reward_model must be a birl.reward_models.RewardModel, got {type(reward_model).__name__}")

        self.algo = algo
        self.seed = seed
        self.agents: List[BilevelMixin] = []
        for k, (env, source) in enumerate(zip(envs, sources)):
            agent_seed = None if seed is None else int(seed) + k
            self.agents.append(algo(policy, env, feedback=source, reward_model=reward_model, seed=agent_seed, **dict(agent_kwargs)))
        first = self.agents[0]
        self.reward_model: RewardModel = first.reward_model
        self.reward_optimizer: th.optim.Optimizer = first.reward_optimizer
        for agent in self.agents[1:]:
            if agent.reward_model is not self.reward_model:  # .to(device) of an nn.Module returns itself
                raise RuntimeError("the agents did not keep the shared reward model object")
            agent.reward_optimizer = self.reward_optimizer  # ONE Adam state for the meta objective
        self.chunk_steps = int(first.outer_freq if chunk_steps is None else chunk_steps)
        self.num_timesteps_per_task = 0

    @staticmethod
    def _feedback_sources(feedback: Any, n: int, seed: Optional[int]) -> List[Any]:
        if feedback is None:
            return [SyntheticTeacher(seed=None if seed is None else int(seed) + k) for k in range(n)]
        if callable(feedback) and not isinstance(feedback, (list, tuple)):
            sources = [feedback(k) for k in range(n)]
        elif isinstance(feedback, (list, tuple)):
            if len(feedback) != n:
                raise ValueError(f"feedback must hold one source per task ({n}), got {len(feedback)}")
            sources = list(feedback)
        else:
            raise TypeError(f"feedback must be None, a list of one source per task or a callable k -> source, got {type(feedback).__name__}")
        if len({id(s) for s in sources}) != len(sources):
            raise ValueError("feedback: every task needs its own feedback object (the same object was given twice)")
        return sources

    # ------------------------------------------------------------------ training
    @property
    def n_tasks(self) -> int:
        return len(self.agents)

    def _n_outer_steps(self, agent: BilevelMixin, steps: int) -> int:
        """Outer steps an agent takes in ``steps`` env steps from scratch (at ``learning_starts + 1``,
        then every ``outer_freq``; SAC trains from ``learning_starts + 1`` on)."""
        usable = steps - agent.learning_starts - 1
        return 0 if usable < 0 else usable // agent.outer_freq + 1

    def relabel(self, k: int) -> None:
        """Rewrite every reward in agent ``k``'s replay buffer with the current shared model."""
        agent = self.agents[k]
        if agent.replay_buffer is not None and (agent.replay_buffer.full or agent.replay_buffer.pos > 0):
            agent._relabel()

    def learn(self, steps_per_task: int, log_interval: int = 4) -> "MetaRewardLearner":
        """Train every task's agent for ``steps_per_task`` env steps, round-robin in chunks of
        ``chunk_steps``; each agent's preference budget (``n_queries``) is spread over its outer
        steps of this call (a quarter at its first one for ``query_schedule="front_loaded"``, the
        agents' default), so a later call asks only what is left of it."""
        if isinstance(steps_per_task, bool) or int(steps_per_task) != steps_per_task or steps_per_task < 1:
            raise ValueError(f"steps_per_task must be a positive integer, got {steps_per_task!r}")
        steps_per_task = int(steps_per_task)
        for agent in self.agents:
            if agent.num_timesteps == 0 and not isinstance(agent.query_schedule, QuerySchedule):
                # SB3 plans the agent's budget per learn() call; the chunks below are many calls,
                # so the budget is planned here over the whole run instead.
                total = max(1, self._n_outer_steps(agent, steps_per_task) - 1)
                agent.query_schedule = budgeted_schedule(agent.query_schedule, agent.n_queries, total)
        done = 0
        while done < steps_per_task:
            n = min(self.chunk_steps, steps_per_task - done)
            for k, agent in enumerate(self.agents):
                self.relabel(k)  # the other tasks' outer steps changed the shared reward meanwhile
                agent.learn(n, reset_num_timesteps=agent.num_timesteps == 0, log_interval=log_interval)
            done += n
        self.num_timesteps_per_task += steps_per_task
        return self

    # ------------------------------------------------------------------ results
    def preference_accuracy(self) -> List[float]:
        """Agreement of the shared reward with each task's stored labels (one value per task)."""
        return [agent.preference_accuracy() for agent in self.agents]

    @property
    def n_labels(self) -> List[int]:
        """Labels stored per task."""
        return [len(agent.preferences) for agent in self.agents]

    def save_reward_model(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the shared reward model (config + weights, :meth:`birl.reward_models.RewardModel.save`)."""
        self.reward_model.save(path)

    @staticmethod
    def load_reward_model(path: Union[str, "os.PathLike[str]"], map_location: Union[str, th.device] = "cpu") -> RewardModel:
        """Read a reward model written by :meth:`save_reward_model` (e.g. to train a fresh agent on a
        held-out task, or as ``reward_model=`` of a new learner to continue meta-training)."""
        return load_reward_model(path, map_location=map_location)

