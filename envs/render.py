"""Frames of a segment, from its observations alone, for people labelling preferences.

:func:`make_renderer` returns a callable ``obs [H, ...] -> uint8 [H, height, width, 3]`` for
:class:`birl.feedback.HumanTeacher`.  A segment stores observations, not simulator states, so
each adapter rebuilds a state from an observation (where that is possible) and renders it:

=========================  ======================================================================
env                        how a frame is made
=========================  ======================================================================
image observations         the observation itself; of a frame stack (``[C, h, w]`` or
(``uint8 [.., .., ..]``)   ``[h, w, C]``), the last frame
MuJoCo (``qpos, qvel``     ``qpos``/``qvel`` set from the observation (positions the observation
layout)                    leaves out, e.g. the x of Hopper, are 0), ``mj_forward``, render
classic control            Pendulum (angle from ``cos``/``sin``), CartPole, MountainCar(-
                           Continuous), Acrobot: the env's ``state`` is set, then rendered
:class:`TabularEnv`        the state index (or one-hot) is set with ``set_state``, then rendered
=========================  ======================================================================

Frames are scaled (nearest neighbour, aspect kept) to fit ``size x size`` pixels.  Any other
env raises ``ValueError`` naming it.  MuJoCo needs an OpenGL backend: without a display,
``MUJOCO_GL=egl`` is set unless ``MUJOCO_GL`` is already set.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional, Union

import gymnasium as gym
import numpy as np

__all__ = ["make_renderer", "fit_frame", "ImageRenderer", "StateRenderer"]


def fit_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Scale an ``[h, w, 3]`` (or ``[h, w]``) image so its longer side is ``size`` (nearest
    neighbour); grey images become RGB."""
    f = np.asarray(frame)
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    if f.ndim != 3 or f.shape[2] not in (3, 4):
        raise ValueError(f"frame must be an [h, w, 3] image, got shape {f.shape}")
    f = f[:, :, :3]
    if f.dtype != np.uint8:
        f = np.clip(f, 0, 255).astype(np.uint8)
    h, w = f.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(nh) / scale).astype(int), h - 1)
    cols = np.minimum((np.arange(nw) / scale).astype(int), w - 1)
    return np.ascontiguousarray(f[rows][:, cols])


def _env_name(env: gym.Env) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


class ImageRenderer:
    """Image observations: each step's image, the last frame of a stack.

    Args:
        channels_per_frame: ``3`` for RGB stacks, ``1`` for grey ones; default: ``3`` when the
            observation has exactly 3 channels, else ``1``.
        channel_first: layout of the observations; default: guessed (channels are the smallest axis).
        size: longer side of the frames in pixels.
    """

    def __init__(self, channels_per_frame: Optional[int] = None, channel_first: Optional[bool] = None, size: int = 128) -> None:
        if channels_per_frame not in (None, 1, 3):
            raise ValueError(f"channels_per_frame must be 1, 3 or None, got {channels_per_frame!r}")
        self.channels_per_frame, self.channel_first, self.size = channels_per_frame, channel_first, int(size)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.ndim == 3:  # [H, h, w]: grey without a channel axis
            obs = obs[..., None]
            first = False
        elif obs.ndim == 4:
            first = self.channel_first if self.channel_first is not None else obs.shape[1] < min(obs.shape[2:])
        else:
            raise ValueError(f"image observations must have shape [H, C, h, w] or [H, h, w, C], got {obs.shape}")
        if first:
            obs = np.moveaxis(obs, 1, -1)
        c = obs.shape[-1]
        k = self.channels_per_frame or (3 if c == 3 else 1)
        last = obs[..., c - k :]
        return np.stack([fit_frame(f[..., 0] if k == 1 else f, self.size) for f in last])


class StateRenderer:
    """Envs whose state can be rebuilt from an observation: ``set_obs(env, obs_t)`` puts the
    env in that state, then ``env.render()`` (``render_mode="rgb_array"``) draws it."""

    def __init__(self, env: gym.Env, set_obs: Callable[[Any, np.ndarray], None], size: int = 128) -> None:
        if env.render_mode != "rgb_array":
            raise ValueError(
                f"env {_env_name(env)}: make it with render_mode='rgb_array' to render segments, got {env.render_mode!r}"
            )
        self.env, self.set_obs, self.size = env, set_obs, int(size)
        self._reset = False

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if not self._reset:  # some envs only render after a reset
            self.env.reset(seed=0)
            self._reset = True
        frames = []
        for o in np.asarray(obs):
            self.set_obs(self.env.unwrapped, o)
            frames.append(fit_frame(self.env.render(), self.size))
        return np.stack(frames)


# -- state from observation ---------------------------------------------------------------------
def _mujoco_setter(env: gym.Env) -> Optional[Callable[[Any, np.ndarray], None]]:
    """For observations laid out ``[qpos[k:], qvel, ...]`` (k leading positions left out), a
    function setting that state; ``None`` for another layout.  ``k`` is found by setting a
    random state and reading ``_get_obs()``."""
    u = env.unwrapped
    nq, nv = u.model.nq, u.model.nv
    get_obs = getattr(u, "_get_obs", None)
    if not callable(get_obs):
        return None
    rng = np.random.default_rng(0)
    qpos, qvel = rng.uniform(-0.1, 0.1, nq), rng.uniform(-0.1, 0.1, nv)
    saved = (u.data.qpos.copy(), u.data.qvel.copy())
    u.set_state(qpos, qvel)
    probe = np.asarray(get_obs(), dtype=np.float64)
    u.set_state(*saved)
    for k in range(min(nq, 3) + 1):
        n = nq - k + nv
        if probe.shape[0] >= n and np.allclose(probe[: nq - k], qpos[k:]) and np.allclose(probe[nq - k : n], qvel):

            def set_obs(env_u: Any, o: np.ndarray, k: int = k) -> None:
                o = np.asarray(o, dtype=np.float64)
                env_u.set_state(np.concatenate([np.zeros(k), o[: nq - k]]), o[nq - k : nq - k + nv])  # runs mj_forward

            return set_obs
    return None


def _set_state_attr(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Any, np.ndarray], None]:
    def set_obs(u: Any, o: np.ndarray) -> None:
        u.state = fn(np.asarray(o, dtype=np.float64))
        if hasattr(u, "last_u"):
            u.last_u = None  # Pendulum draws the last torque otherwise

    return set_obs


_CLASSIC = {
    "PendulumEnv": _set_state_attr(lambda o: np.array([np.arctan2(o[1], o[0]), o[2]])),
    "CartPoleEnv": _set_state_attr(lambda o: o[:4].copy()),
    "MountainCarEnv": _set_state_attr(lambda o: o[:2].copy()),
    "Continuous_MountainCarEnv": _set_state_attr(lambda o: o[:2].copy()),
    "AcrobotEnv": _set_state_attr(lambda o: np.array([np.arctan2(o[1], o[0]), np.arctan2(o[3], o[2]), o[4], o[5]])),
}


def _tabular_set_obs(u: Any, o: np.ndarray) -> None:
    o = np.asarray(o)
    s = int(np.argmax(o)) if o.size > 1 else int(o.reshape(()))  # one-hot or index
    state = u.get_state()
    state["state"] = s
    u.set_state(state)


def _is_mujoco(env: gym.Env) -> bool:
    u = env.unwrapped
    if not (hasattr(u, "model") and hasattr(u, "data") and hasattr(u, "set_state")):
        return False
    mujoco = sys.modules.get("mujoco")
    return mujoco is not None and isinstance(u.model, mujoco.MjModel)


def _headless_gl() -> None:
    """Without a display, MuJoCo renders through EGL (unless ``MUJOCO_GL`` says otherwise)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("MUJOCO_GL", "egl")


def make_renderer(env: Union[str, gym.Env], size: int = 128) -> Callable[[np.ndarray], np.ndarray]:
    """A renderer ``obs [H, ...] -> uint8 [H, height, width, 3]`` for segments of ``env``.

    Args:
        env: an env id (made with ``render_mode="rgb_array"``, MuJoCo at ``size`` pixels) or an
            env instance; instances other than image-observation ones must have been made with
            ``render_mode="rgb_array"``.  Keep it for rendering only: its state is overwritten.
        size: longer side of the frames in pixels (small keeps the query files small).

    Raises:
        ValueError: no adapter for ``env`` (the message names it).
    """
    if not (isinstance(size, (int, np.integer)) and 8 <= size <= 1024):
        raise ValueError(f"size must be an int in [8, 1024] pixels, got {size!r}")
    if isinstance(env, str):
        _headless_gl()
        try:
            env = gym.make(env, render_mode="rgb_array", width=size, height=size)
        except TypeError:  # only MuJoCo envs take width/height
            env = gym.make(env, render_mode="rgb_array")
    if not isinstance(env, gym.Env):
        raise TypeError(f"env must be a gymnasium.Env or an env id, got {type(env).__name__}")
    space = env.observation_space
    if isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3):
        return ImageRenderer(size=size)
    u = env.unwrapped
    from envs.tabular_env import TabularEnv

    if isinstance(u, TabularEnv):
        return StateRenderer(env, _tabular_set_obs, size)
    if type(u).__name__ in _CLASSIC:
        return StateRenderer(env, _CLASSIC[type(u).__name__], size)
    if _is_mujoco(env):
        setter = _mujoco_setter(env)
        if setter is not None:
            _headless_gl()
            return StateRenderer(env, setter, size)
        raise ValueError(
            f"env {_env_name(env)}: its observations are not laid out as [qpos, qvel, ...], so no state "
            "can be rebuilt from them; pass HumanTeacher a renderer of your own"
        )
    raise ValueError(
        f"env {_env_name(env)}: no segment renderer for it (supported: image observations, MuJoCo, "
        f"{', '.join(sorted(_CLASSIC))}, TabularEnv); pass HumanTeacher a renderer of your own"
    )
