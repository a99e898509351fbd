"""Gymnasium environments backed by a :class:`birl.tabular.TabularMDP`.

:class:`TabularEnv` turns a finite soft MDP ``(S, A, P, r_x, gamma, tau, rho)`` into a
``gymnasium.Env`` with ``Discrete(S)`` observations and ``Discrete(A)`` actions.  The env
exposes the model (``P``, ``rho``, ``features``, ``mdp``) so that model-based estimators
(``exact``, ``msobirl``) and sampled ones (``branch``) can run on the same object, and it can
save and restore its full state (:meth:`TabularEnv.get_state` / :meth:`TabularEnv.set_state`)
for branching rollouts (DESIGN.md section 2).

The MDP is infinite-horizon and discounted: episodes never terminate, they are truncated
after ``max_episode_steps`` steps (``None`` disables truncation).
"""

from __future__ import annotations

import copy
from typing import Any, Optional, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from birl.tabular import TabularMDP, garnet, gridworld

__all__ = ["TabularEnv", "make_garnet_env", "make_gridworld_env"]


def _as_index(value: Any, name: str, n: int) -> int:
    """Convert ``value`` to an int in ``[0, n)`` or raise an error naming ``name``."""
    arr = np.asarray(value)
    if arr.size != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise TypeError(f"{name} must be an integer in [0, {n}), got {value!r}")
    idx = int(arr.reshape(()))
    if not 0 <= idx < n:
        raise ValueError(f"{name} must be an integer in [0, {n}), got {idx}")
    return idx


class TabularEnv(gym.Env):
    """A ``gymnasium.Env`` view of a tabular soft MDP.

    Args:
        mdp: the :class:`~birl.tabular.TabularMDP` to simulate.
        reward_params: outer variable ``x``; the env reward is the table ``mdp.reward(x)``.
        reward_table: an explicit ``(S, A)`` reward table (exclusive with ``reward_params``).
            With neither, the reward is zero everywhere.
        max_episode_steps: truncate episodes after this many steps (``None``: never).
        render_mode: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (a ``uint8`` frame: one
            cell per state, shaded by ``max_a r(s, a)``, the current state in red).
        grid_shape: optional ``(rows, cols)`` with ``rows * cols == S``; rendering then lays
            the states out on a grid (default: one row).

    Attributes:
        mdp, P, rho, features, gamma, tau, reward_table: the model (read-only views).

    ``info`` dicts are empty: the observation already is the state.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}
    _CELL = 8  # pixels per state in rgb_array frames

    def __init__(
        self,
        mdp: TabularMDP,
        reward_params: Optional[np.ndarray] = None,
        *,
        reward_table: Optional[np.ndarray] = None,
        max_episode_steps: Optional[int] = 100,
        render_mode: Optional[str] = None,
        grid_shape: Optional[tuple] = None,
    ) -> None:
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a birl.tabular.TabularMDP, got {type(mdp).__name__}")
        if max_episode_steps is not None and (
            int(max_episode_steps) != max_episode_steps or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        if grid_shape is not None:
            grid_shape = tuple(int(g) for g in grid_shape)
            if len(grid_shape) != 2 or grid_shape[0] * grid_shape[1] != mdp.n_states:
                raise ValueError(
                    f"grid_shape must be (rows, cols) with rows * cols == {mdp.n_states}, got {grid_shape!r}"
                )
        self.mdp = mdp
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.render_mode = render_mode
        self.grid_shape = grid_shape
        self.observation_space = spaces.Discrete(mdp.n_states)
        self.action_space = spaces.Discrete(mdp.n_actions)
        # cumulative distributions for inverse-CDF sampling with the env's own np_random
        self._P_cum = np.cumsum(mdp.P, axis=-1)
        self._P_cum[..., -1] = 1.0
        self._rho_cum = np.cumsum(mdp.rho)
        self._rho_cum[-1] = 1.0
        self._reward = np.zeros((mdp.n_states, mdp.n_actions))
        self.set_reward(reward_params, reward_table=reward_table)
        self._state: Optional[int] = None
        self._t = 0
        self._last_action: Optional[int] = None
        self._last_reward: Optional[float] = None

    # ------------------------------------------------------------------ model
    @property
    def P(self) -> np.ndarray:
        """Transition tensor ``(S, A, S)``."""
        return self.mdp.P

    @property
    def rho(self) -> np.ndarray:
        """Initial state distribution ``(S,)``."""
        return self.mdp.rho

    @property
    def features(self) -> Optional[np.ndarray]:
        """Linear reward features ``(S, A, d)`` (``None`` for a non-linear reward)."""
        return self.mdp.features

    @property
    def gamma(self) -> float:
        return self.mdp.gamma

    @property
    def tau(self) -> float:
        return self.mdp.tau

    @property
    def reward_table(self) -> np.ndarray:
        """The ``(S, A)`` reward table the env pays out (a copy)."""
        return self._reward.copy()

    @property
    def state(self) -> Optional[int]:
        """Current state (``None`` before the first reset)."""
        return self._state

    def set_reward(self, reward_params: Optional[np.ndarray] = None, *, reward_table: Optional[np.ndarray] = None) -> None:
        """Replace the env reward by ``mdp.reward(reward_params)`` or by ``reward_table``.

        With neither argument the reward becomes zero everywhere.
        """
        S, A = self.mdp.n_states, self.mdp.n_actions
        if reward_params is not None and reward_table is not None:
            raise ValueError("pass either reward_params or reward_table, not both")
        if reward_params is not None:
            table = self.mdp.reward(reward_params)
        elif reward_table is not None:
            table = np.asarray(reward_table, dtype=np.float64)
            if table.shape != (S, A):
                raise ValueError(f"reward_table must have shape ({S}, {A}), got {table.shape}")
            if not np.all(np.isfinite(table)):
                raise ValueError("reward_table contains NaN or inf")
        else:
            table = np.zeros((S, A))
        self._reward = np.array(table, dtype=np.float64)

    # ------------------------------------------------------------ gym API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[int, dict]:
        """Sample ``s0 ~ rho``; ``options={"state": s}`` starts from a given state instead."""
        super().reset(seed=seed)
        if options is not None and options.get("state") is not None:
            s0 = _as_index(options["state"], 'options["state"]', self.mdp.n_states)
        else:
            s0 = int(np.searchsorted(self._rho_cum, self.np_random.random(), side="right"))
            s0 = min(s0, self.mdp.n_states - 1)
        self._state, self._t = s0, 0
        self._last_action = self._last_reward = None
        return s0, {}

    def step(self, action: Any) -> tuple[int, SupportsFloat, bool, bool, dict]:
        """Pay ``r(s, a)`` and move to ``s' ~ P(.|s, a)``."""
        if self._state is None:
            raise RuntimeError("TabularEnv.step() called before reset()")
        a = _as_index(action, "action", self.mdp.n_actions)
        s = self._state
        reward = float(self._reward[s, a])
        s_next = int(np.searchsorted(self._P_cum[s, a], self.np_random.random(), side="right"))
        s_next = min(s_next, self.mdp.n_states - 1)
        self._state = s_next
        self._t += 1
        self._last_action, self._last_reward = a, reward
        truncated = self.max_episode_steps is not None and self._t >= self.max_episode_steps
        return s_next, reward, False, truncated, {}

    def render(self) -> Optional[Any]:
        if self.render_mode is None:
            gym.logger.warn("TabularEnv.render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        head = f"t={self._t} s={self._state}"
        if self._last_action is not None:
            head += f" last_action={self._last_action} last_reward={self._last_reward:.4g}"
        if self.grid_shape is None or self._state is None:
            return head + "\n"
        rows, cols = self.grid_shape
        cells = [["." for _ in range(cols)] for _ in range(rows)]
        r, c = divmod(self._state, cols)
        cells[r][c] = "A"
        return head + "\n" + "\n".join(" ".join(row) for row in cells) + "\n"

    def _render_rgb(self) -> np.ndarray:
        rows, cols = self.grid_shape if self.grid_shape is not None else (1, self.mdp.n_states)
        value = self._reward.max(axis=1)
        span = value.max() - value.min()
        shade = (value - value.min()) / span if span > 0 else np.zeros_like(value)
        cells = np.empty((self.mdp.n_states, 3), dtype=np.uint8)
        cells[:, 0] = cells[:, 1] = (230 - 150 * shade).astype(np.uint8)
        cells[:, 2] = 230
        if self._state is not None:
            cells[self._state] = (220, 30, 30)
        img = cells.reshape(rows, cols, 3)
        img = np.repeat(np.repeat(img, self._CELL, axis=0), self._CELL, axis=1)
        img[:: self._CELL, :, :] = 255  # thin cell borders
        img[:, :: self._CELL, :] = 255
        return img

    # -------------------------------------------------------- state cloning
    def get_state(self) -> dict:
        """Everything needed to replay the future: state, step count and RNG state (a copy)."""
        return {
            "state": self._state,
            "t": self._t,
            "rng": copy.deepcopy(self.np_random.bit_generator.state),
        }

    def set_state(self, state: dict) -> None:
        """Restore a snapshot taken by :meth:`get_state` (on this env or one with the same MDP)."""
        if not isinstance(state, dict) or not {"state", "t", "rng"} <= set(state):
            raise TypeError("state must be a dict from TabularEnv.get_state() with keys 'state', 't', 'rng'")
        s = state["state"]
        self._state = None if s is None else _as_index(s, 'state["state"]', self.mdp.n_states)
        t = state["t"]
        if int(t) != t or t < 0:
            raise ValueError(f'state["t"] must be a non-negative integer, got {t!r}')
        self._t = int(t)
        rng_state = state["rng"]
        if not isinstance(rng_state, dict) or "bit_generator" not in rng_state:
            raise TypeError('state["rng"] must be a numpy bit_generator.state dict')
        if rng_state.get("bit_generator") != type(self.np_random.bit_generator).__name__:
            # a snapshot from an env seeded with another bit generator: adopt its generator type
            bitgen = getattr(np.random, rng_state["bit_generator"])()
            self._np_random = np.random.Generator(bitgen)
        self.np_random.bit_generator.state = copy.deepcopy(rng_state)
        self._last_action = self._last_reward = None

    def __repr__(self) -> str:
        return f"TabularEnv({self.mdp!r}, max_episode_steps={self.max_episode_steps})"


# ------------------------------------------------------------ entry points
def make_garnet_env(
    n_states: int = 20,
    n_actions: int = 4,
    n_features: int = 8,
    gamma: float = 0.9,
    tau: float = 1.0,
    seed: Optional[int] = 0,
    branching: Optional[int] = None,
    reward_params: Optional[np.ndarray] = None,
    reward_table: Optional[np.ndarray] = None,
    max_episode_steps: Optional[int] = 100,
    render_mode: Optional[str] = None,
) -> TabularEnv:
    """Entry point of ``birl/Garnet-v0``: a :func:`birl.tabular.garnet` MDP as an env.

    ``seed`` fixes the MDP (transitions and features), not the episode randomness, which is
    seeded through ``env.reset(seed=...)`` as usual.
    """
    mdp = garnet(n_states, n_actions, n_features, gamma=gamma, tau=tau, seed=seed, branching=branching)
    return TabularEnv(
        mdp,
        reward_params,
        reward_table=reward_table,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
    )


def make_gridworld_env(
    size: int = 5,
    gamma: float = 0.9,
    tau: float = 1.0,
    slip: float = 0.1,
    start: Optional[tuple] = (0, 0),
    reward_params: Optional[np.ndarray] = None,
    reward_table: Optional[np.ndarray] = None,
    max_episode_steps: Optional[int] = 100,
    render_mode: Optional[str] = None,
) -> TabularEnv:
    """Entry point of ``birl/GridWorld-v0``: a :func:`birl.tabular.gridworld` MDP as an env.

    Features are one-hot cells, so ``reward_params`` is a length ``size * size`` state reward.
    """
    mdp = gridworld(size, gamma=gamma, tau=tau, slip=slip, start=start)
    return TabularEnv(
        mdp,
        reward_params,
        reward_table=reward_table,
        max_episode_steps=max_episode_steps,
        render_mode=render_mode,
        grid_shape=(size, size),
    )


# gymnasium.make reads render modes from the entry point's metadata (enables e.g. "human"
# through its HumanRendering wrapper and "rgb_array_list")
make_garnet_env.metadata = TabularEnv.metadata
make_gridworld_env.metadata = TabularEnv.metadata
