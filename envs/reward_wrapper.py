"""Replace an environment's reward by a learned reward model ``r_x(s, a, s')``.

The outer variable ``x`` of soft bilevel RL (DESIGN.md section 1) is the parameter vector of
a reward model; the inner agent must always see the *current* ``r_x``, while benchmarks report
the *true* return.  Two wrappers do this:

* :class:`ParameterisedReward`, a ``gymnasium.Wrapper`` for one env,
* :class:`VecParameterisedReward`, a Stable-Baselines3 ``VecEnvWrapper`` that evaluates the
  model once per step for all sub-envs (one batched forward pass).

Both keep the env's own reward in ``info["true_reward"]`` and, when an episode ends
(terminated or truncated), its sum and length in ``info["true_episode_return"]`` and
``info["true_episode_length"]``.

Reward-model protocol
---------------------
A ``torch.nn.Module`` with ``forward(obs, act, next_obs) -> Tensor[B]`` where

* ``obs`` and ``next_obs`` are ``Tensor[B, *obs_shape]``: ``float32`` for ``Box`` spaces
  (images stay unscaled ``0..255``: scaling is the model's business), ``int64`` for
  ``Discrete`` (shape ``[B]``), ``MultiDiscrete`` and ``MultiBinary`` spaces;
* ``act`` is ``Tensor[B, *act_shape]`` with the same dtype rules (``Discrete`` actions are an
  ``int64`` tensor of shape ``[B]``);
* the output may also be ``[B, 1]``; the model may ignore ``next_obs``.

Inputs are put on the device of the model's first parameter (or buffer; CPU if it has
neither), looked up at every call so the model may be moved after wrapping.  The forward pass
runs under ``torch.no_grad()``; the wrappers never change the model's train/eval mode.
"""

from __future__ import annotations

import math
from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

__all__ = [
    "ParameterisedReward",
    "VecParameterisedReward",
    "batch_rewards",
    "model_device",
    "check_reward_model",
]

_SUPPORTED_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of ``model``'s first parameter, else first buffer, else CPU."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_reward_model(reward_model: Any) -> torch.nn.Module:
    """Return ``reward_model`` if it is a ``torch.nn.Module``, else raise ``TypeError``."""
    if not isinstance(reward_model, torch.nn.Module):
        raise TypeError(
            "reward_model must be a torch.nn.Module with forward(obs, act, next_obs) -> Tensor[B], "
            f"got {type(reward_model).__name__}"
        )
    return reward_model


def _check_space(space: spaces.Space, name: str) -> None:
    if not isinstance(space, _SUPPORTED_SPACES):
        raise TypeError(
            f"{name} must be a Box, Discrete, MultiDiscrete or MultiBinary space for a reward model, "
            f"got {space!r}"
        )


def _to_tensor(x: Any, space: spaces.Space, batch: int, device: torch.device, name: str) -> torch.Tensor:
    """Batch ``x`` (leading dimension ``batch``) into the tensor the reward model expects.

    ``x`` may already be such a tensor (then it is only moved to ``device``).
    """
    shape = (batch,) + tuple(space.shape)
    if isinstance(x, torch.Tensor):
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must be a tensor of shape {shape}, got {tuple(x.shape)}")
        return x if x.device == device else x.to(device)
    arr = np.asarray(x)
    if arr.shape != shape:
        if arr.size != math.prod(shape):
            raise ValueError(
                f"{name} must hold {batch} element(s) of shape {space.shape}, got an array of shape {arr.shape}"
            )
        arr = arr.reshape(shape)
    if isinstance(space, spaces.Box):
        if arr.dtype == np.uint8:  # images: move the compact bytes, cast on the device
            ok = arr.flags.writeable and arr.flags.c_contiguous
            t = torch.as_tensor(arr if ok else np.ascontiguousarray(arr).copy())
            return (t if device.type == "cpu" else t.to(device)).float()
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
    elif arr.dtype != np.int64:
        arr = arr.astype(np.int64)
    if not (arr.flags.writeable and arr.flags.c_contiguous):  # torch warns on read-only memory
        arr = np.ascontiguousarray(arr).copy()
    t = torch.as_tensor(arr)
    return t if device.type == "cpu" else t.to(device)


def _evaluate(
    reward_model: torch.nn.Module, obs_t: torch.Tensor, act_t: torch.Tensor, next_t: torch.Tensor
) -> np.ndarray:
    """Forward pass without autograd; checks the output and returns a ``float32`` numpy ``[B]``."""
    batch = obs_t.shape[0]
    with torch.no_grad():
        out = reward_model(obs_t, act_t, next_t)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"reward_model must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != (batch,) and out.shape != (batch, 1):
        raise ValueError(
            f"reward_model must return a tensor of shape [{batch}] (or [{batch}, 1]) for a batch of "
            f"{batch}, got {tuple(out.shape)}"
        )
    if out.device.type != "cpu":
        out = out.cpu()
    if out.dtype != torch.float32:
        out = out.float()
    return out.numpy().reshape(batch)


def batch_rewards(
    reward_model: torch.nn.Module,
    obs: Any,
    actions: Any,
    next_obs: Any,
    observation_space: spaces.Space,
    action_space: spaces.Space,
) -> np.ndarray:
    """Evaluate ``reward_model`` on a batch of transitions; returns a ``float32`` array ``[B]``.

    ``obs``, ``actions`` and ``next_obs`` are numpy arrays (or tensors already in the protocol's
    dtype) whose leading dimension is the batch size, taken from ``obs``; see the module
    docstring for the tensor protocol.  Useful to relabel stored transitions.
    """
    if not isinstance(obs, torch.Tensor):
        obs = np.asarray(obs)
    if obs.ndim <= len(observation_space.shape):
        raise ValueError(
            f"obs must be a batch of observations of shape (B, *{observation_space.shape}), got shape "
            f"{tuple(obs.shape)}"
        )
    batch = obs.shape[0]
    device = model_device(reward_model)
    obs_t = _to_tensor(obs, observation_space, batch, device, "obs")
    act_t = _to_tensor(actions, action_space, batch, device, "actions")
    next_t = _to_tensor(next_obs, observation_space, batch, device, "next_obs")
    return _evaluate(reward_model, obs_t, act_t, next_t)


class ParameterisedReward(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Pay ``r_x(s, a, s')`` from a torch reward model instead of the env's reward.

    Args:
        env: a Gymnasium env with a Box / Discrete / MultiDiscrete / MultiBinary observation
            and action space (vector or ``uint8`` image observations).
        reward_model: a ``torch.nn.Module`` following the protocol of this module.

    ``info["true_reward"]`` holds the env's reward unchanged; at the end of an episode
    ``info["true_episode_return"]`` (float sum of true rewards) and
    ``info["true_episode_length"]`` (int) are added.  Put a ``Monitor`` *inside* this wrapper
    to log true returns with Stable-Baselines3.
    """

    def __init__(self, env: gym.Env, reward_model: torch.nn.Module) -> None:
        if not isinstance(env, gym.Env):
            raise TypeError(f"env must be a gymnasium.Env, got {type(env).__name__}")
        gym.utils.RecordConstructorArgs.__init__(self, reward_model=reward_model)
        gym.Wrapper.__init__(self, env)
        _check_space(env.observation_space, "env.observation_space")
        _check_space(env.action_space, "env.action_space")
        self.reward_model = check_reward_model(reward_model)
        self._last_obs: Any = None
        self._true_return = 0.0
        self._length = 0

    def set_reward_model(self, reward_model: torch.nn.Module) -> None:
        """Swap the reward model (e.g. after an outer update that built a new module)."""
        self.reward_model = check_reward_model(reward_model)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._last_obs = obs
        self._true_return, self._length = 0.0, 0
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        if self._last_obs is None:
            raise RuntimeError("ParameterisedReward.step() called before reset()")
        obs, true_reward, terminated, truncated, info = self.env.step(action)
        reward = float(
            batch_rewards(
                self.reward_model,
                np.expand_dims(np.asarray(self._last_obs), 0),
                np.expand_dims(np.asarray(action), 0),
                np.expand_dims(np.asarray(obs), 0),
                self.observation_space,
                self.action_space,
            )[0]
        )
        info = dict(info)
        info["true_reward"] = true_reward
        self._true_return += float(true_reward)
        self._length += 1
        if terminated or truncated:
            info["true_episode_return"] = self._true_return
            info["true_episode_length"] = self._length
            self._true_return, self._length = 0.0, 0
        self._last_obs = obs
        return obs, reward, terminated, truncated, info

    # used by envs.cloning so that branched rollouts see the right s and episode counters
    def get_wrapper_state(self) -> dict:
        """Snapshot of the wrapper's own state (last observation and episode counters)."""
        last = self._last_obs
        return {
            "last_obs": last.copy() if isinstance(last, np.ndarray) else last,
            "true_return": self._true_return,
            "length": self._length,
        }

    def set_wrapper_state(self, state: dict) -> None:
        """Restore a snapshot from :meth:`get_wrapper_state`."""
        last = state["last_obs"]
        self._last_obs = last.copy() if isinstance(last, np.ndarray) else last
        self._true_return = float(state["true_return"])
        self._length = int(state["length"])


class VecParameterisedReward(VecEnvWrapper):
    """Stable-Baselines3 ``VecEnvWrapper`` paying ``r_x(s, a, s')`` for all sub-envs at once.

    One batched forward pass of ``reward_model`` per ``step``.  With SB3's auto-reset the
    observation returned for a finished sub-env is the first one of the next episode; the real
    ``s'`` of that last transition is read from ``infos[i]["terminal_observation"]``.

    ``infos[i]["true_reward"]`` holds the sub-env's reward as the wrapped VecEnv returned it,
    and ``infos[i]["true_episode_return"]`` / ``["true_episode_length"]`` are set on the step
    that ends an episode.  The model sees observations as ``venv`` produces them (after any
    ``VecNormalize`` / ``VecFrameStack`` placed below this wrapper); to normalise the learned
    reward, put ``VecNormalize`` above it.
    """

    def __init__(self, venv: VecEnv, reward_model: torch.nn.Module) -> None:
        if not isinstance(venv, VecEnv):
            raise TypeError(f"venv must be a stable_baselines3 VecEnv, got {type(venv).__name__}")
        super().__init__(venv)
        _check_space(self.observation_space, "venv.observation_space")
        _check_space(self.action_space, "venv.action_space")
        self.reward_model = check_reward_model(reward_model)
        self._last_obs: Optional[np.ndarray] = None
        self._last_obs_t: Optional[torch.Tensor] = None
        self._actions: Optional[np.ndarray] = None
        self._true_returns = np.zeros(self.num_envs, dtype=np.float64)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)

    def set_reward_model(self, reward_model: torch.nn.Module) -> None:
        """Swap the reward model."""
        self.reward_model = check_reward_model(reward_model)

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self._last_obs = obs
        self._last_obs_t = None
        self._true_returns[:] = 0.0
        self._lengths[:] = 0
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.array(actions)  # a copy: callers may reuse their buffer
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, true_rewards, dones, infos = self.venv.step_wait()
        if self._last_obs is None or self._actions is None:
            raise RuntimeError("VecParameterisedReward.step() called before reset()")
        n, obs_space = self.num_envs, self.observation_space
        device = model_device(self.reward_model)
        # each observation is converted once: as s' now and, cached, as s at the next step
        last_t = self._last_obs_t
        if last_t is None or last_t.device != device:  # after reset, or the model was moved
            last_t = _to_tensor(self._last_obs, obs_space, n, device, "observations")
        obs_t = _to_tensor(obs, obs_space, n, device, "observations")
        next_t = obs_t
        done_idx = np.flatnonzero(dones)
        if done_idx.size:
            missing = [int(i) for i in done_idx if "terminal_observation" not in infos[i]]
            if missing:
                raise KeyError(
                    f"infos{missing} lack 'terminal_observation' on a done step; VecParameterisedReward "
                    "needs a VecEnv with SB3 auto-reset semantics"
                )
            terminal = np.stack([np.asarray(infos[i]["terminal_observation"]) for i in done_idx])
            next_t = obs_t.clone()
            next_t[torch.as_tensor(done_idx, device=device)] = _to_tensor(
                terminal, obs_space, done_idx.size, device, "terminal_observation"
            )
        act_t = _to_tensor(self._actions, self.action_space, n, device, "actions")
        rewards = _evaluate(self.reward_model, last_t, act_t, next_t)

        self._true_returns += true_rewards
        self._lengths += 1
        for info, true_reward in zip(infos, true_rewards.tolist()):
            info["true_reward"] = true_reward
        for i in done_idx:
            infos[i]["true_episode_return"] = float(self._true_returns[i])
            infos[i]["true_episode_length"] = int(self._lengths[i])
            self._true_returns[i] = 0.0
            self._lengths[i] = 0
        self._last_obs, self._last_obs_t = obs, obs_t
        return obs, rewards, dones, infos
