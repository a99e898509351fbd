"""Fixed-length trajectory segments (fragments) for preference feedback.

A :class:`Segment` is ``H`` consecutive transitions of one episode; a :class:`SegmentBatch` is
``N`` of them stacked.  Both carry the environment's TRUE rewards in ``true_rewards``: that field
is what a :class:`birl.feedback.SyntheticTeacher` reads.  Rewards predicted by a learned model,
if a caller wants them along, go in the separate ``learned_rewards`` field, which no teacher reads.

Sampling never crosses an episode boundary: a window ``[t, t + H)`` is valid when no transition
before its last one ends an episode (the last one may).

Absorbing states (Kostrikov et al. 2019, "Discriminator-Actor-Critic", section 4.2): pass the
termination flags and a window may run past a *termination* (never a truncation); its steps after
the termination are marked in ``absorbing`` and hold the terminal observation, a zero action and
a zero true reward.  Reward models give absorbing steps reward 0 (:func:`birl.feedback.segment_returns`).
That fixes the free constant of a Bradley-Terry reward: ``r + c`` explains equal-length
preferences exactly as ``r`` does, but with terminations the constant decides whether ending an
episode is good or bad.  With ``r(absorbing) = 0`` the value after a termination is 0, which is
what an SB3 learner assumes at a terminal transition; DAC's learned ``r(absorbing)`` is the same
model shifted by a constant, which no longer changes the optimal policy once every episode runs
on forever in the absorbing state.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from birl._checks import nonempty_list_of

__all__ = [
    "SEGMENT_FIELDS",
    "Segment",
    "SegmentBatch",
    "Trajectory",
    "valid_window_starts",
    "sample_segments_from_buffer",
    "sample_segments_from_rollouts",
]


def _arr(x: Any, name: str) -> np.ndarray:
    if x is None:
        raise ValueError(f"{name} is required")
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got dtype object")
    return a


def _rng(rng: Union[np.random.Generator, int, None]) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


#: the per-segment arrays of a :class:`SegmentBatch` that datasets and query files store
SEGMENT_FIELDS = ("obs", "acts", "true_rewards", "next_obs", "absorbing", "env_ids", "episode_ids", "starts")


def _check_absorbing(seg: Any, reward_shape: Tuple[int, ...]) -> None:
    """Validate ``absorbing``: bool of the rewards' shape, a suffix of each segment, zero true reward."""
    a = _arr(seg.absorbing, "absorbing")
    if a.shape != reward_shape:
        raise ValueError(f"absorbing must have shape {reward_shape}, got {a.shape}")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError("absorbing must hold booleans (or 0/1)")
        a = a.astype(bool)
    if a[..., 0].any():
        raise ValueError("absorbing: a segment must start in a real (non-absorbing) state")
    if (a[..., :-1] & ~a[..., 1:]).any():
        raise ValueError("absorbing: once a segment reaches the absorbing state it stays there (a real step follows an absorbing one)")
    if (seg.true_rewards[a] != 0).any():
        raise ValueError("absorbing steps must have true reward 0 (the episode has ended)")
    seg.absorbing = a


def _check_optional_fields(seg: Any, reward_shape: Tuple[int, ...]) -> None:
    """Validate (and convert in place) ``next_obs``, ``learned_rewards`` and ``absorbing`` of a segment or batch."""
    if seg.next_obs is not None:
        seg.next_obs = _arr(seg.next_obs, "next_obs")
        if seg.next_obs.shape != seg.obs.shape:
            raise ValueError(f"next_obs must have the shape of obs {seg.obs.shape}, got {seg.next_obs.shape}")
    if seg.learned_rewards is not None:
        seg.learned_rewards = _arr(seg.learned_rewards, "learned_rewards").astype(np.float64, copy=False)
        if seg.learned_rewards.shape != reward_shape:
            raise ValueError(f"learned_rewards must have shape {reward_shape}, got {seg.learned_rewards.shape}")
    if seg.absorbing is not None:
        _check_absorbing(seg, reward_shape)


@dataclass
class Segment:
    """One fragment of ``H`` transitions.

    Attributes:
        obs: ``[H, *obs_shape]`` observations ``s_t``.
        acts: ``[H, *act_shape]`` actions ``a_t``.
        true_rewards: ``[H]`` environment rewards ``r(s_t, a_t)``: the teacher's ground truth.
        next_obs: ``[H, *obs_shape]`` observations ``s_{t+1}`` or ``None``.
        learned_rewards: optional ``[H]`` model predictions, carried for logging only.
        absorbing: optional bool ``[H]``: steps after the episode terminated (module docstring);
            ``None`` means every step is real.
        env_id: index of the (vectorised) environment the fragment came from.
        episode_id: episode index within its source (buffer / rollout list), ``-1`` if unknown.
        start: time step of ``obs[0]`` within its episode (or source array), ``-1`` if unknown.
    """

    obs: np.ndarray
    acts: np.ndarray
    true_rewards: np.ndarray
    next_obs: Optional[np.ndarray] = None
    learned_rewards: Optional[np.ndarray] = None
    absorbing: Optional[np.ndarray] = None
    env_id: int = 0
    episode_id: int = -1
    start: int = -1

    def __post_init__(self) -> None:
        self.obs, self.acts = _arr(self.obs, "obs"), _arr(self.acts, "acts")
        self.true_rewards = _arr(self.true_rewards, "true_rewards").astype(np.float64, copy=False)
        if self.true_rewards.ndim != 1:
            raise ValueError(f"true_rewards must have shape [H], got {self.true_rewards.shape}")
        h = self.true_rewards.shape[0]
        if h == 0:
            raise ValueError("a segment needs at least one transition (true_rewards is empty)")
        for name in ("obs", "acts"):
            if getattr(self, name).ndim == 0 or getattr(self, name).shape[0] != h:
                raise ValueError(f"{name} must have length H={h} (from true_rewards), got shape {getattr(self, name).shape}")
        _check_optional_fields(self, (h,))

    @property
    def horizon(self) -> int:
        return int(self.true_rewards.shape[0])

    def true_return(self, gamma: float = 1.0) -> float:
        """``sum_t gamma^(H-1-t) r_t`` of the true rewards (``gamma=1``: the plain sum)."""
        w = gamma ** np.arange(self.horizon - 1, -1, -1, dtype=np.float64)
        return float(self.true_rewards @ w)


@dataclass
class SegmentBatch:
    """``N`` segments of equal length ``H`` stacked on a leading axis.

    Attributes mirror :class:`Segment` with a leading ``N`` axis: ``obs [N, H, ...]``,
    ``acts [N, H, ...]``, ``true_rewards [N, H]``, ``next_obs``/``learned_rewards``/``absorbing`` optional,
    ``env_ids``, ``episode_ids``, ``starts`` of shape ``[N]`` (int64).
    """

    obs: np.ndarray
    acts: np.ndarray
    true_rewards: np.ndarray
    next_obs: Optional[np.ndarray] = None
    learned_rewards: Optional[np.ndarray] = None
    absorbing: Optional[np.ndarray] = None
    env_ids: Optional[np.ndarray] = None
    episode_ids: Optional[np.ndarray] = None
    starts: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.obs, self.acts = _arr(self.obs, "obs"), _arr(self.acts, "acts")
        self.true_rewards = _arr(self.true_rewards, "true_rewards").astype(np.float64, copy=False)
        if self.true_rewards.ndim != 2:
            raise ValueError(f"true_rewards must have shape [N, H], got {self.true_rewards.shape}")
        n, h = self.true_rewards.shape
        for name in ("obs", "acts"):
            a = getattr(self, name)
            if a.ndim < 2 or a.shape[:2] != (n, h):
                raise ValueError(f"{name} must have shape [N={n}, H={h}, ...] (from true_rewards), got {a.shape}")
        _check_optional_fields(self, (n, h))
        defaults = {"env_ids": 0, "episode_ids": -1, "starts": -1}
        for name, default in defaults.items():
            v = getattr(self, name)
            v = np.full(n, default, dtype=np.int64) if v is None else _arr(v, name).astype(np.int64)
            if v.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
            setattr(self, name, v)

    def __len__(self) -> int:
        return int(self.true_rewards.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.true_rewards.shape[1])

    def true_returns(self, gamma: float = 1.0) -> np.ndarray:
        """``[N]`` returns ``sum_t gamma^(H-1-t) r_t`` of the true rewards."""
        w = gamma ** np.arange(self.horizon - 1, -1, -1, dtype=np.float64)
        return self.true_rewards @ w

    @property
    def alive(self) -> np.ndarray:
        """Float ``[N, H]`` mask: 1 on real steps, 0 on absorbing ones."""
        if self.absorbing is None:
            return np.ones(self.true_rewards.shape)
        return (~self.absorbing).astype(np.float64)

    def __getitem__(self, idx: Any) -> Union[Segment, "SegmentBatch"]:
        """An int gives a :class:`Segment`; a slice, index array or mask a :class:`SegmentBatch`."""
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            return Segment(
                self.obs[i], self.acts[i], self.true_rewards[i],
                None if self.next_obs is None else self.next_obs[i],
                None if self.learned_rewards is None else self.learned_rewards[i],
                None if self.absorbing is None else self.absorbing[i],
                int(self.env_ids[i]), int(self.episode_ids[i]), int(self.starts[i]),
            )  # fmt: skip
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return SegmentBatch(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @classmethod
    def from_segments(cls, segments: Sequence[Segment]) -> "SegmentBatch":
        """Stack segments of equal length and shapes (``next_obs`` kept only if all have it)."""
        segments = nonempty_list_of(segments, Segment, "segments")
        for i, s in enumerate(segments):
            for name in ("obs", "acts", "true_rewards"):
                if getattr(s, name).shape != getattr(segments[0], name).shape:
                    raise ValueError(f"segments[{i}].{name} has shape {getattr(s, name).shape}, segments[0] has {getattr(segments[0], name).shape}")

        def opt(name: str) -> Optional[np.ndarray]:
            vals = [getattr(s, name) for s in segments]
            if name == "absorbing":  # a segment without the mask has real steps only
                vals = _fill_absorbing(vals, [s.true_rewards.shape for s in segments])
            return None if any(v is None for v in vals) else np.stack(vals)

        return cls(
            np.stack([s.obs for s in segments]), np.stack([s.acts for s in segments]),
            np.stack([s.true_rewards for s in segments]), opt("next_obs"), opt("learned_rewards"), opt("absorbing"),
            np.array([s.env_id for s in segments]), np.array([s.episode_id for s in segments]),
            np.array([s.start for s in segments]),
        )  # fmt: skip

    @classmethod
    def concatenate(cls, batches: Sequence["SegmentBatch"]) -> "SegmentBatch":
        """Concatenate batches along ``N`` (optional fields kept only if every batch has them)."""
        batches = list(batches)
        if not batches:
            raise ValueError("batches must not be empty")
        out = {}
        for f in fields(cls):
            vals = [getattr(b, f.name) for b in batches]
            if f.name == "absorbing":
                vals = _fill_absorbing(vals, [b.true_rewards.shape for b in batches])
            out[f.name] = None if any(v is None for v in vals) else np.concatenate(vals)
        return cls(**out)


def _fill_absorbing(masks: Sequence[Optional[np.ndarray]], shapes: Sequence[Tuple[int, ...]]) -> list:
    """``absorbing`` masks to combine: unchanged when none has one, else ``None`` -> all real."""
    if all(m is None for m in masks):
        return list(masks)
    return [np.zeros(shape, dtype=bool) if m is None else m for m, shape in zip(masks, shapes)]


def as_batch(segments: Union[Segment, SegmentBatch, Sequence[Segment]], name: str = "segments") -> SegmentBatch:
    """Promote a :class:`Segment` or a list of them to a :class:`SegmentBatch`."""
    if isinstance(segments, SegmentBatch):
        return segments
    if isinstance(segments, Segment):
        return SegmentBatch.from_segments([segments])
    if isinstance(segments, (list, tuple)):
        return SegmentBatch.from_segments(segments)
    raise TypeError(f"{name} must be a Segment, SegmentBatch or list of Segments, got {type(segments).__name__}")


@dataclass
class Trajectory:
    """One episode: ``obs [T+1, ...]`` (with the final observation), ``acts [T, ...]``,
    ``rewards [T]`` (true rewards) and how it ended (``terminated`` / ``truncated``)."""

    obs: np.ndarray
    acts: np.ndarray
    rewards: np.ndarray
    terminated: bool = False
    truncated: bool = False

    def __post_init__(self) -> None:
        self.obs, self.acts = _arr(self.obs, "obs"), _arr(self.acts, "acts")
        self.rewards = _arr(self.rewards, "rewards").astype(np.float64, copy=False)
        if self.rewards.ndim != 1:
            raise ValueError(f"rewards must have shape [T], got {self.rewards.shape}")
        t = self.rewards.shape[0]
        if self.acts.ndim == 0 or self.acts.shape[0] != t:
            raise ValueError(f"acts must have length T={t} (from rewards), got shape {self.acts.shape}")
        if self.obs.ndim == 0 or self.obs.shape[0] != t + 1:
            raise ValueError(f"obs must have length T+1={t + 1} (including the final observation), got shape {self.obs.shape}")
        self.terminated, self.truncated = bool(self.terminated), bool(self.truncated)

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def dones(self) -> np.ndarray:
        """``[T]`` booleans, ``True`` only on the last transition."""
        d = np.zeros(len(self), dtype=bool)
        if len(self):
            d[-1] = True
        return d


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _next_end(dones: np.ndarray) -> np.ndarray:
    """``[L, ...]``: index of the first done at or after each row (``L`` where none follows)."""
    length = dones.shape[0]
    idx = np.where(dones, np.arange(length).reshape((-1,) + (1,) * (dones.ndim - 1)), length)
    return np.minimum.accumulate(idx[::-1], axis=0)[::-1]


def valid_window_starts(dones: np.ndarray, horizon: int, terminations: Optional[np.ndarray] = None) -> np.ndarray:
    """Boolean ``[L]`` (or ``[L, n_envs]``) mask of starts ``t`` whose window ``[t, t+H)`` fits in
    the array and has no episode end before its last transition.

    With ``terminations`` (bool, the shape of ``dones``: the episode ended by termination, not
    truncation), a window may also run past a termination: its remaining steps are absorbing
    (module docstring), so it need not fit in the array.
    """
    return _valid_windows(dones, horizon, terminations)[0]


def _valid_windows(dones: np.ndarray, horizon: int, terminations: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`valid_window_starts` and, per row, the first episode end at or after it (``L`` where
    none follows): the last real row of a window that starts there and runs past a termination."""
    dones = np.asarray(dones, dtype=bool)
    length = dones.shape[0]
    if length == 0:
        return np.zeros(dones.shape, dtype=bool), np.zeros(dones.shape, dtype=np.int64)
    end = _next_end(dones)
    t = np.arange(length).reshape((-1,) + (1,) * (dones.ndim - 1))
    valid = (end >= t + horizon - 1) & (t + horizon - 1 < length)
    if terminations is not None:
        terminations = np.asarray(terminations, dtype=bool)
        if terminations.shape != dones.shape:
            raise ValueError(f"terminations must have the shape of dones {dones.shape}, got {terminations.shape}")
        if (terminations & ~dones).any():
            raise ValueError("terminations must be a subset of dones (a termination ends the episode)")
        ends_in_termination = np.take_along_axis(terminations, np.minimum(end, length - 1), axis=0) & (end < length)
        valid |= (end < t + horizon - 1) & ends_in_termination
    return valid, end


def _check_horizon_n(horizon: int, n: int) -> None:
    if not isinstance(horizon, (int, np.integer)) or horizon <= 0:
        raise ValueError(f"horizon must be a positive int, got {horizon!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


def _choose(n_valid: int, n: int, replace: bool, rng: np.random.Generator, what: str) -> np.ndarray:
    if n_valid == 0:
        raise ValueError(f"no valid fragment start: every {what} is shorter than horizon (or crosses an episode end)")
    if not replace and n > n_valid:
        raise ValueError(f"n={n} fragments requested without replacement but only {n_valid} valid starts exist")
    return rng.choice(n_valid, size=n, replace=replace)


def sample_segments_from_buffer(
    obs: np.ndarray,
    acts: np.ndarray,
    true_rewards: np.ndarray,
    dones: np.ndarray,
    *,
    horizon: int,
    n: int,
    rng: Union[np.random.Generator, int, None] = None,
    next_obs: Optional[np.ndarray] = None,
    terminations: Optional[np.ndarray] = None,
    pos: Optional[int] = None,
    full: bool = True,
    env_axis: bool = True,
    replace: bool = False,
) -> SegmentBatch:
    """Sample ``n`` fragments of length ``horizon`` from replay-buffer arrays.

    The layout is Stable-Baselines3's: ``obs [T, n_envs, *obs_shape]``, ``acts [T, n_envs, ...]``,
    ``true_rewards [T, n_envs]``, ``dones [T, n_envs]`` (``dones[t, e]``: transition ``t`` of env
    ``e`` ended its episode, by termination or truncation).  Pass ``env_axis=False`` for arrays
    without the ``n_envs`` axis.

    ``true_rewards`` must be the environment's rewards: when a buffer is relabelled with a
    learned reward (PEBBLE), keep a copy of the true ones for the teacher.

    ``terminations`` (the shape of ``dones``; SB3: ``dones & ~timeouts``) lets fragments run past
    a termination into the absorbing state (module docstring); the batch then carries an
    ``absorbing`` mask.  Without it fragments stay inside episodes and ``absorbing`` is ``None``.

    Ring buffers: with ``pos`` given, ``full=False`` means only rows ``[0, pos)`` are filled, and
    ``full=True`` means the buffer wrapped, so the oldest row is ``pos`` and time runs
    ``pos, ..., T-1, 0, ..., pos-1``; fragments follow that order and never straddle the write
    pointer.  ``pos=None`` treats all ``T`` rows as filled, in time order.

    Returns a :class:`SegmentBatch` whose ``env_ids`` are env indices, ``episode_ids`` count the
    episode ends before the fragment in that env (within the buffer) and ``starts`` are the
    physical buffer rows of ``obs[:, 0]``.
    """
    _check_horizon_n(horizon, n)
    rng = _rng(rng)
    arrays = {"obs": _arr(obs, "obs"), "acts": _arr(acts, "acts"), "true_rewards": _arr(true_rewards, "true_rewards"), "dones": _arr(dones, "dones")}
    if next_obs is not None:
        arrays["next_obs"] = _arr(next_obs, "next_obs")
    if terminations is not None:
        arrays["terminations"] = _arr(terminations, "terminations")
    if not env_axis:
        arrays = {k: v[:, None] for k, v in arrays.items()}
    size, n_envs = arrays["true_rewards"].shape[:2] if arrays["true_rewards"].ndim == 2 else (None, None)
    if size is None:
        raise ValueError(f"true_rewards must have shape [T, n_envs] (or [T] with env_axis=False), got {np.shape(true_rewards)}")
    for k, v in arrays.items():
        if v.ndim < 2 or v.shape[:2] != (size, n_envs):
            raise ValueError(f"{k} must have leading shape ({size}, {n_envs}) like true_rewards, got {v.shape}")
    if arrays["dones"].ndim != 2:
        raise ValueError(f"dones must have shape [T, n_envs], got {arrays['dones'].shape}")
    if "next_obs" in arrays and arrays["next_obs"].shape != arrays["obs"].shape:
        raise ValueError(f"next_obs must have the shape of obs {arrays['obs'].shape}, got {arrays['next_obs'].shape}")

    if pos is None:
        offset, length = 0, size
    else:
        if not 0 <= pos <= size:
            raise ValueError(f"pos must lie in [0, {size}], got {pos}")
        offset, length = (pos % size, size) if full else (0, pos)
    logical = (offset + np.arange(length)) % size if size else np.arange(0)
    dones_l = arrays["dones"][logical].astype(bool)
    terms_l = arrays["terminations"][logical].astype(bool) if terminations is not None else None
    valid, end = _valid_windows(dones_l, horizon, terms_l)
    t_valid, e_valid = np.nonzero(valid)
    pick = _choose(len(t_valid), n, replace, rng, "filled region")
    t0, env = t_valid[pick], e_valid[pick]
    steps = t0[:, None] + np.arange(horizon)  # [n, H] logical rows
    last = end[t0, env][:, None]  # a window's real rows stop at its episode's end
    absorbing = steps > last
    rows = logical[np.minimum(steps, last)]  # [n, H] physical rows; absorbing steps repeat the terminal row
    episode_counts = np.concatenate([np.zeros((1, n_envs), dtype=np.int64), np.cumsum(dones_l, 0)])

    def gather(a: np.ndarray) -> np.ndarray:
        return a[rows, env[:, None]]

    obs, acts, true_rewards = gather(arrays["obs"]), gather(arrays["acts"]).copy(), gather(arrays["true_rewards"]).copy()
    nxt = gather(arrays["next_obs"]) if "next_obs" in arrays else None
    if absorbing.any():  # the absorbing state: terminal observation, zero action, zero reward
        obs = obs.copy()
        obs[absorbing] = (nxt if nxt is not None else obs)[absorbing]
        acts[absorbing], true_rewards[absorbing] = 0, 0
    return SegmentBatch(
        obs=obs, acts=acts, true_rewards=true_rewards, next_obs=nxt,
        absorbing=absorbing if terminations is not None else None,
        env_ids=env, episode_ids=episode_counts[t0, env], starts=rows[:, 0],
    )  # fmt: skip


def _as_trajectory(r: Any, i: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """``(obs, acts, rewards, next_obs)`` of rollout ``i`` (a Trajectory or a mapping)."""
    if isinstance(r, Trajectory):
        return r.obs[:-1], r.acts, r.rewards, r.obs[1:]
    if isinstance(r, Mapping):
        try:
            o, a, rew = _arr(r["obs"], f"rollouts[{i}]['obs']"), _arr(r["acts"], f"rollouts[{i}]['acts']"), _arr(r["rewards"], f"rollouts[{i}]['rewards']")
        except KeyError as err:
            raise ValueError(f"rollouts[{i}] must have keys 'obs', 'acts', 'rewards' (and optionally 'next_obs'), missing {err}") from None
        t = len(rew)
        nxt = r.get("next_obs")
        if nxt is not None:
            nxt = _arr(nxt, f"rollouts[{i}]['next_obs']")
        if len(o) == t + 1:
            o, nxt = o[:-1], (o[1:] if nxt is None else nxt)
        if len(o) != t or len(a) != t:
            raise ValueError(f"rollouts[{i}]: obs must have length T or T+1 and acts length T={t}, got {len(o)} and {len(a)}")
        return o, a, rew, nxt
    raise TypeError(f"rollouts[{i}] must be a Trajectory or a mapping, got {type(r).__name__}")


def sample_segments_from_rollouts(
    rollouts: Iterable[Union[Trajectory, Mapping[str, Any]]],
    *,
    horizon: int,
    n: int,
    rng: Union[np.random.Generator, int, None] = None,
    replace: bool = False,
    absorbing: bool = False,
) -> SegmentBatch:
    """Sample ``n`` fragments uniformly over all windows ``[t, t+H)`` inside single rollouts.

    Each rollout is one episode: a :class:`Trajectory` or a mapping with ``obs`` (length ``T`` or
    ``T+1``), ``acts``, ``rewards`` (true rewards, length ``T``), optional ``next_obs`` and
    optional ``terminated`` (default ``False``).  ``next_obs`` is filled when every rollout
    provides it (a ``T+1`` ``obs`` does).  Shorter rollouts than ``horizon`` are skipped.
    ``episode_ids`` are rollout indices, ``starts`` the time step of the first transition.

    ``absorbing=True``: windows of a terminated rollout may run past its end into the absorbing
    state, as :func:`sample_segments_from_buffer` does with ``terminations``.
    """
    _check_horizon_n(horizon, n)
    rng = _rng(rng)
    rollouts = list(rollouts)
    parts = [_as_trajectory(r, i) for i, r in enumerate(rollouts)]
    if not parts:
        raise ValueError("rollouts must not be empty")
    if absorbing:
        return _sample_absorbing(parts, [_terminated(r) for r in rollouts], horizon, n, rng, replace)
    counts = np.array([max(len(p[2]) - horizon + 1, 0) for p in parts], dtype=np.int64)
    pick = _choose(int(counts.sum()), n, replace, rng, "rollout")
    cum = np.cumsum(counts)
    ep = np.searchsorted(cum, pick, side="right")
    start = pick - (cum[ep] - counts[ep])
    has_next = all(p[3] is not None for p in parts)
    segs = [
        Segment(
            parts[e][0][s : s + horizon], parts[e][1][s : s + horizon], parts[e][2][s : s + horizon],
            parts[e][3][s : s + horizon] if has_next else None, episode_id=int(e), start=int(s),
        )  # fmt: skip
        for e, s in zip(ep, start)
    ]
    if not segs:
        first = parts[int(np.argmax(counts))]
        o, a = first[0], first[1]
        return SegmentBatch(
            np.zeros((0, horizon) + o.shape[1:], o.dtype), np.zeros((0, horizon) + a.shape[1:], a.dtype),
            np.zeros((0, horizon)), np.zeros((0, horizon) + o.shape[1:], o.dtype) if has_next else None,
        )  # fmt: skip
    return SegmentBatch.from_segments(segs)


def _terminated(r: Any) -> bool:
    return bool(r.terminated if isinstance(r, Trajectory) else r.get("terminated", False))


def _sample_absorbing(parts, terminated, horizon: int, n: int, rng: np.random.Generator, replace: bool) -> SegmentBatch:
    """:func:`sample_segments_from_rollouts` with ``absorbing=True``: the rollouts laid end to end
    as one buffer, each ending in a done (a termination where the rollout terminated)."""
    index = np.array([i for i, p in enumerate(parts) if len(p[2])], dtype=np.int64)  # original rollout ids
    parts = [(parts[i], terminated[i]) for i in index]
    if not parts:
        raise ValueError("no valid fragment start: every rollout is empty")
    lengths = np.array([len(p[2]) for p, _ in parts])
    ends = np.cumsum(lengths) - 1
    dones = np.zeros(int(lengths.sum()), dtype=bool)
    dones[ends] = True
    terms = np.zeros_like(dones)
    terms[ends] = [term for _, term in parts]
    has_next = all(p[3] is not None for p, _ in parts)
    cat = lambda k: np.concatenate([p[k] for p, _ in parts])  # noqa: E731
    batch = sample_segments_from_buffer(
        cat(0), cat(1), cat(2), dones, horizon=horizon, n=n, rng=rng, next_obs=cat(3) if has_next else None,
        terminations=terms, env_axis=False, replace=replace,
    )  # fmt: skip
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    batch.starts = batch.starts - offsets[batch.episode_ids]  # buffer rows -> time steps in the rollout
    batch.episode_ids = index[batch.episode_ids]
    return batch
