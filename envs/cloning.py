"""State cloning for branched rollouts (the ``branch`` estimator, DESIGN.md section 2).

The ``branch`` estimator restarts two fresh rollouts from a visited state ``s_h``.  On a
simulator that means: save the full state, roll out, restore, roll out again.
:func:`get_cloner` picks an adapter for the *innermost* env (``env.unwrapped``):

========================  ==========================================================
env                       what is saved
========================  ==========================================================
:class:`TabularEnv`       ``get_state()``: state, step count, RNG state (any env with a
                          ``get_state()`` / ``set_state(state)`` pair is handled alike)
MuJoCo (``.model``,       a full copy of ``mjData`` (``qpos``, ``qvel``, ``act``, ``time``,
``.data``)                warm-start and derived quantities) and ``np_random``'s state
ALE (``.ale``)            ``ale.cloneState(include_rng=True)`` (emulator, sticky-action RNG)
                          and ``np_random``'s state (stochastic frame skip)
========================  ==========================================================

Wrapper state is saved too, so a restored env continues exactly as the original did:
``TimeLimit``'s step counter, ``OrderEnforcing``'s reset flag and the state of any wrapper
with a ``get_wrapper_state()`` / ``set_wrapper_state(state)`` pair (such as
:class:`envs.reward_wrapper.ParameterisedReward`).  Other stateful wrappers (frame stacks,
``RecordEpisodeStatistics``, SB3 ``Monitor``'s episode log) are not rewound.

A snapshot belongs to one env type: restore it into the env it came from or an identically
constructed one.  Neither ``mujoco`` nor ``ale_py`` is imported unless such an env is seen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

__all__ = [
    "Cloner",
    "EnvSnapshot",
    "StatefulEnvCloner",
    "MujocoCloner",
    "AleCloner",
    "get_cloner",
    "can_clone",
]


@runtime_checkable
class Cloner(Protocol):
    """Saves and restores the full state of an env (including wrappers)."""

    def clone(self, env: gym.Env) -> Any: ...

    def restore(self, env: gym.Env, state: Any) -> None: ...


@dataclass
class EnvSnapshot:
    """What a cloner returns: the core env's state and the wrappers' states, outermost first."""

    core: Any
    wrappers: list = field(default_factory=list)
    kind: str = ""


# --------------------------------------------------------------- wrappers
def _wrapper_chain(env: gym.Env) -> list:
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(env)
        env = env.env
    return chain


def _save_wrapper(w: gym.Wrapper) -> Any:
    if callable(getattr(w, "get_wrapper_state", None)) and callable(getattr(w, "set_wrapper_state", None)):
        return ("custom", w.get_wrapper_state())
    if isinstance(w, gym.wrappers.TimeLimit):
        return ("time_limit", w._elapsed_steps)
    if isinstance(w, gym.wrappers.OrderEnforcing):
        return ("order", w._has_reset)
    return None


def _load_wrapper(w: gym.Wrapper, saved: Any) -> None:
    if saved is None:
        return
    tag, value = saved
    if tag == "custom":
        w.set_wrapper_state(value)
    elif tag == "time_limit":
        w._elapsed_steps = value
    elif tag == "order":
        w._has_reset = value


def _rng_state(env: gym.Env) -> dict:
    return copy.deepcopy(env.np_random.bit_generator.state)


def _set_rng_state(env: gym.Env, state: dict) -> None:
    rng = env.np_random
    if type(rng.bit_generator).__name__ != state["bit_generator"]:
        rng = np.random.Generator(getattr(np.random, state["bit_generator"])())
        env.np_random = rng
    rng.bit_generator.state = copy.deepcopy(state)


class _BaseCloner:
    """Shared clone/restore logic: core state from the subclass, wrapper states from here."""

    kind = "base"

    def clone(self, env: gym.Env) -> EnvSnapshot:
        """Snapshot ``env`` (core and wrappers)."""
        return EnvSnapshot(
            core=self._clone_core(env.unwrapped),
            wrappers=[_save_wrapper(w) for w in _wrapper_chain(env)],
            kind=self.kind,
        )

    def restore(self, env: gym.Env, state: EnvSnapshot) -> None:
        """Put ``env`` back in the snapshot ``state`` taken by :meth:`clone`."""
        if not isinstance(state, EnvSnapshot) or state.kind != self.kind:
            got = f"an EnvSnapshot of kind {state.kind!r}" if isinstance(state, EnvSnapshot) else type(state).__name__
            raise TypeError(f"state must be an EnvSnapshot from a {type(self).__name__}, got {got}")
        chain = _wrapper_chain(env)
        if len(chain) != len(state.wrappers):
            raise ValueError(
                f"state was taken on an env with {len(state.wrappers)} wrapper(s); env {env} has {len(chain)}"
            )
        self._restore_core(env.unwrapped, state.core)
        for w, saved in zip(chain, state.wrappers):
            _load_wrapper(w, saved)

    def _clone_core(self, env: gym.Env) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _restore_core(self, env: gym.Env, state: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class StatefulEnvCloner(_BaseCloner):
    """Envs with ``get_state()`` / ``set_state(state)``, e.g. :class:`envs.TabularEnv`."""

    kind = "stateful"

    @staticmethod
    def supports(env: gym.Env) -> bool:
        u = env.unwrapped
        get, put = getattr(u, "get_state", None), getattr(u, "set_state", None)
        if not (callable(get) and callable(put)):
            return False
        from envs.tabular_env import TabularEnv

        if isinstance(u, TabularEnv):
            return True
        # duck typing: a zero-argument get_state and a one-argument set_state
        import inspect

        try:
            n_get = len(inspect.signature(get).parameters)
            n_put = len(inspect.signature(put).parameters)
        except (TypeError, ValueError):
            return False
        return n_get == 0 and n_put == 1

    def _clone_core(self, env: gym.Env) -> Any:
        return env.get_state()

    def _restore_core(self, env: gym.Env, state: Any) -> None:
        env.set_state(copy.deepcopy(state))


class MujocoCloner(_BaseCloner):
    """Gymnasium MuJoCo envs: a full ``mjData`` copy plus the env's ``np_random`` state."""

    kind = "mujoco"

    @staticmethod
    def supports(env: gym.Env) -> bool:
        u = env.unwrapped
        if not (hasattr(u, "model") and hasattr(u, "data")):
            return False
        try:
            import mujoco
        except ImportError:
            return False
        return isinstance(u.model, mujoco.MjModel) and isinstance(u.data, mujoco.MjData)

    def _clone_core(self, env: gym.Env) -> Any:
        import mujoco

        data = mujoco.MjData(env.model)
        mujoco.mj_copyData(data, env.model, env.data)
        return {"data": data, "rng": _rng_state(env)}

    def _restore_core(self, env: gym.Env, state: Any) -> None:
        import mujoco

        # copy into the env's own MjData object: renderers and views keep pointing at it
        mujoco.mj_copyData(env.data, env.model, state["data"])
        _set_rng_state(env, state["rng"])


class AleCloner(_BaseCloner):
    """ALE envs (``ale_py``): emulator state with its RNG plus the env's ``np_random`` state."""

    kind = "ale"

    @staticmethod
    def supports(env: gym.Env) -> bool:
        ale = getattr(env.unwrapped, "ale", None)
        return callable(getattr(ale, "cloneState", None)) and callable(getattr(ale, "restoreState", None))

    def _clone_core(self, env: gym.Env) -> Any:
        try:
            ale_state = env.ale.cloneState(include_rng=True)
        except TypeError:  # older ale-py without the include_rng keyword
            ale_state = env.ale.cloneState()
        return {"ale": ale_state, "rng": _rng_state(env)}

    def _restore_core(self, env: gym.Env, state: Any) -> None:
        env.ale.restoreState(state["ale"])
        _set_rng_state(env, state["rng"])


_CLONERS = (StatefulEnvCloner, MujocoCloner, AleCloner)


def _find(env: gym.Env):
    if not isinstance(env, gym.Env):
        return None
    for cls in _CLONERS:
        if cls.supports(env):
            return cls
    return None


def can_clone(env: Any) -> bool:
    """Whether :func:`get_cloner` has an adapter for ``env``."""
    return _find(env) is not None


def get_cloner(env: Any) -> Cloner:
    """An object with ``clone(env) -> state`` and ``restore(env, state)`` for ``env``.

    Raises:
        TypeError: naming the env, when it is not a ``gymnasium.Env`` or no adapter applies.
    """
    if not isinstance(env, gym.Env):
        raise TypeError(f"env must be a gymnasium.Env to clone its state, got {type(env).__name__}")
    cls = _find(env)
    if cls is None:
        u = env.unwrapped
        name = env.spec.id if env.spec is not None else type(u).__name__
        raise TypeError(
            f"cannot clone the state of env {name!r} ({type(u).__module__}.{type(u).__qualname__}): "
            "supported are envs with get_state()/set_state(state) (e.g. envs.TabularEnv), Gymnasium "
            "MuJoCo envs (unwrapped.model/.data) and ALE envs (unwrapped.ale)"
        )
    return cls()
