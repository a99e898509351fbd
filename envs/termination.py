"""Known termination rules of Gymnasium environments, for rollouts in a learned model.

A model-based agent (M-SoBiRL, like MBPO) rolls its policy out inside a learned dynamics
model; where the environment's termination rule is known, applying it to the model's predicted
next observations is better than learning it.  :func:`termination_rule` returns that rule as a
function ``(obs, act, next_obs) -> [B] bool tensor`` on batches of observations, built from the
env's registered settings (``healthy_z_range`` and so on, defaults overridden by the spec's
kwargs), or ``None`` for an env it does not know.

The rules restate the ``step`` methods of Gymnasium 1.x (checked against the envs in
``tests/test_termination.py``):

* ``Hopper``: healthy while ``z`` (``qpos[1]``) and the torso angle (``qpos[2]``) lie strictly
  inside their ranges and every entry of the state after them lies inside
  ``healthy_state_range``.  The observation clips velocities to ``[-10, 10]``, so a velocity
  beyond that range's bound (100) cannot be seen; the rule then says healthy.
* ``Walker2d``: ``z`` and angle strictly inside their ranges.
* ``Ant``: a finite state and ``z`` (``qpos[2]``) inside ``healthy_z_range``, bounds included.
* ``Humanoid``: ``z`` (``qpos[2]``) strictly inside ``healthy_z_range``.
* ``InvertedPendulum``: a non-finite observation or ``|angle| > 0.2``.
* ``MountainCarContinuous``: ``position >= goal_position`` and ``velocity >= goal_velocity``.
* ``Pendulum``, ``HalfCheetah``, ``Swimmer``, ``Reacher``, ``Pusher``: never terminate.

With ``terminate_when_unhealthy=False`` the healthy-range envs never terminate either.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional

import torch

TerminationFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_NEVER = ("Pendulum", "HalfCheetah", "Swimmer", "Reacher", "Pusher")


def never_terminates(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    """The rule of an env without terminations: all ``False``."""
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def _inside(x: torch.Tensor, bounds: Any, closed: bool = False) -> torch.Tensor:
    low, high = (float(b) for b in bounds)
    return (low <= x) & (x <= high) if closed else (low < x) & (x < high)


def _settings(spec: Any) -> Dict[str, Any]:
    """The env constructor's defaults, overridden by the spec's kwargs."""
    from gymnasium.envs.registration import load_env_creator

    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    defaults = {k: p.default for k, p in inspect.signature(creator).parameters.items() if p.default is not inspect.Parameter.empty}
    return {**defaults, **dict(spec.kwargs or {})}


def termination_rule(env_id: Any) -> Optional[TerminationFn]:
    """The known termination rule of ``env_id`` (an id or a Gymnasium ``EnvSpec``), or ``None``.

    Raises:
        ValueError: ``env_id`` is not a registered Gymnasium env.
    """
    import gymnasium as gym

    try:
        spec = env_id if isinstance(env_id, gym.envs.registration.EnvSpec) else gym.spec(str(env_id))
    except gym.error.Error as err:
        raise ValueError(f"env_id: {env_id!r} is not a registered Gymnasium env ({err})") from None
    name = spec.name
    if name in _NEVER:
        return never_terminates
    if name == "MountainCarContinuous":
        goal = _settings(spec).get("goal_velocity", 0.0)
        return lambda obs, act, nxt: (nxt[:, 0] >= 0.45) & (nxt[:, 1] >= float(goal))
    if name == "InvertedPendulum":
        return lambda obs, act, nxt: ~torch.isfinite(nxt).all(1) | (nxt[:, 1].abs() > 0.2)
    if name not in ("Hopper", "Walker2d", "Ant", "Humanoid"):
        return None
    s = _settings(spec)
    if not s.get("terminate_when_unhealthy", True):
        return never_terminates
    shift = 0 if s.get("exclude_current_positions_from_observation", True) else (1 if name in ("Hopper", "Walker2d") else 2)
    if name == "Ant":
        return lambda obs, act, nxt: ~(torch.isfinite(nxt).all(1) & _inside(nxt[:, shift], s["healthy_z_range"], closed=True))
    if name == "Humanoid":
        return lambda obs, act, nxt: ~_inside(nxt[:, shift], s["healthy_z_range"])

    def planar(obs: torch.Tensor, act: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        healthy = _inside(nxt[:, shift], s["healthy_z_range"]) & _inside(nxt[:, shift + 1], s["healthy_angle_range"])
        if name == "Hopper":  # the state after (x,) z: qpos[2:] and the (clipped) velocities
            healthy &= _inside(nxt[:, shift + 1 :], s["healthy_state_range"]).all(1)
        return ~healthy

    return planar
