"""Constructors for reward-model environments (single Gymnasium env or SB3 VecEnv).

Both follow Gymnasium 1.x conventions: envs are built with ``gymnasium.make`` (keyword
arguments such as ``render_mode`` go through), seeding happens at ``reset(seed=...)``, and
``ALE/...`` ids are registered on demand when ``ale_py`` is installed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Type, Union

import gymnasium as gym
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv

from envs.reward_wrapper import ParameterisedReward, VecParameterisedReward, check_reward_model

__all__ = ["make_reward_env", "make_reward_vec_env", "ensure_registered"]


def ensure_registered(env_id: str) -> None:
    """Make ``env_id`` known to ``gymnasium.make``: registers ``ALE/...`` ids from ``ale_py``.

    Does nothing for ids already registered.  Raises ``gymnasium.error.Error`` (from
    ``gymnasium.make``) later if the id stays unknown.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a string, got {type(env_id).__name__}")
    if env_id in gym.registry:
        return
    if env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError as err:
            raise ImportError(f"env_id {env_id!r} needs ale-py: pip install 'ale-py>=0.9'") from err
        gym.register_envs(ale_py)
    elif env_id.startswith("birl/"):
        import envs  # noqa: F401  (registers our ids)


def make_reward_env(
    env_id_or_env: Union[str, gym.Env],
    reward_model: torch.nn.Module,
    **make_kwargs: Any,
) -> ParameterisedReward:
    """``ParameterisedReward(gymnasium.make(env_id, **make_kwargs), reward_model)``.

    Args:
        env_id_or_env: a registered env id or an existing ``gymnasium.Env`` (then
            ``make_kwargs`` must be empty).
        reward_model: reward model (see :mod:`envs.reward_wrapper` for the protocol).
        make_kwargs: forwarded to ``gymnasium.make`` (``render_mode``, ``max_episode_steps``,
            env constructor arguments, ...).
    """
    check_reward_model(reward_model)
    if isinstance(env_id_or_env, gym.Env):
        if make_kwargs:
            raise ValueError(
                f"make_kwargs {sorted(make_kwargs)} can only be used with an env id, not with an existing env"
            )
        env = env_id_or_env
    elif isinstance(env_id_or_env, str):
        ensure_registered(env_id_or_env)
        env = gym.make(env_id_or_env, **make_kwargs)
    else:
        raise TypeError(f"env_id_or_env must be an env id (str) or a gymnasium.Env, got {type(env_id_or_env).__name__}")
    return ParameterisedReward(env, reward_model)


def make_reward_vec_env(
    env_id: Union[str, Callable[..., gym.Env]],
    reward_model: torch.nn.Module,
    n_envs: int = 1,
    seed: Optional[int] = None,
    *,
    start_index: int = 0,
    monitor_dir: Optional[str] = None,
    wrapper_class: Optional[Callable[[gym.Env], gym.Env]] = None,
    env_kwargs: Optional[dict] = None,
    vec_env_cls: Optional[Type[VecEnv]] = None,
    vec_env_kwargs: Optional[dict] = None,
    monitor_kwargs: Optional[dict] = None,
    wrapper_kwargs: Optional[dict] = None,
) -> VecParameterisedReward:
    """SB3 ``make_vec_env`` (each sub-env in a ``Monitor``) topped by ``VecParameterisedReward``.

    The ``Monitor`` sits inside the reward wrapper, so SB3's ``ep_rew_mean`` and the monitor
    files report the *true* return, while the agent learns from the reward model.  The model
    runs in the main process, once per step for all ``n_envs`` (also with ``SubprocVecEnv``).
    Arguments other than ``reward_model`` are those of
    ``stable_baselines3.common.env_util.make_vec_env``.
    """
    check_reward_model(reward_model)
    if int(n_envs) != n_envs or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    if isinstance(env_id, str):
        ensure_registered(env_id)
    elif not callable(env_id):
        raise TypeError(f"env_id must be an env id (str) or a callable returning an env, got {type(env_id).__name__}")
    venv = make_vec_env(
        env_id,
        n_envs=int(n_envs),
        seed=seed,
        start_index=start_index,
        monitor_dir=monitor_dir,
        wrapper_class=wrapper_class,
        env_kwargs=env_kwargs,
        vec_env_cls=vec_env_cls,
        vec_env_kwargs=vec_env_kwargs,
        monitor_kwargs=monitor_kwargs,
        wrapper_kwargs=wrapper_kwargs,
    )
    return VecParameterisedReward(venv, reward_model)
