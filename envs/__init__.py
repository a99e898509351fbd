"""envs: the Gymnasium side of soft bilevel RL.

* :class:`TabularEnv` -- a ``gymnasium.Env`` over a :class:`birl.tabular.TabularMDP` that
  exposes ``P``, ``rho`` and ``features`` and can save/restore its state;
* :class:`ParameterisedReward` / :class:`VecParameterisedReward` -- pay a learned reward
  ``r_x(s, a, s')`` and keep the true reward in ``info``;
* :func:`make_reward_env` / :func:`make_reward_vec_env` -- constructors;
* :func:`get_cloner` / :func:`can_clone` -- state cloning for branched rollouts;
* :func:`make_renderer` -- frames of a segment from its observations (for human labelling).

Importing this package registers ``birl/Garnet-v0`` and ``birl/GridWorld-v0`` with Gymnasium.
MuJoCo and ALE support are optional extras, imported only when such an env is used.
"""

import gymnasium as gym

from envs.cloning import Cloner, EnvSnapshot, can_clone, get_cloner
from envs.make import ensure_registered, make_reward_env, make_reward_vec_env
from envs.render import make_renderer
from envs.reward_wrapper import ParameterisedReward, VecParameterisedReward, batch_rewards
from envs.tabular_env import TabularEnv, make_garnet_env, make_gridworld_env

__all__ = [
    "TabularEnv",
    "make_garnet_env",
    "make_gridworld_env",
    "ParameterisedReward",
    "VecParameterisedReward",
    "batch_rewards",
    "make_reward_env",
    "make_reward_vec_env",
    "ensure_registered",
    "get_cloner",
    "can_clone",
    "Cloner",
    "EnvSnapshot",
    "make_renderer",
    "register_envs",
]

ENV_IDS = {
    "birl/Garnet-v0": "envs.tabular_env:make_garnet_env",
    "birl/GridWorld-v0": "envs.tabular_env:make_gridworld_env",
}


def register_envs() -> None:
    """Register this package's env ids with Gymnasium (idempotent; runs on import).

    Episode truncation is done by :class:`TabularEnv` itself (``max_episode_steps`` kwarg), so
    no ``TimeLimit`` is added: its step counter is then part of ``TabularEnv.get_state()``.
    """
    for env_id, entry_point in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)


register_envs()
