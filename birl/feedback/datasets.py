"""Feedback datasets: labelled preference pairs and expert demonstrations.

* :class:`PreferenceDataset` stores pairs ``(d^1, d^2, y)`` with ``y`` in ``{0, 0.5, 1}``
  (``1``: ``d^1`` preferred), append-only with an optional capacity, and saves to one atomic
  ``.npz`` file that round-trips every array exactly.
* :class:`Demonstrations` stores whole episodes (:class:`Trajectory`), can collect them from any
  policy in any environment following the gymnasium ``reset``/``step`` API (duck-typed, so
  :mod:`birl` never imports gymnasium) and saves to one atomic ``.npz`` file.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from birl.feedback.segments import (
    SEGMENT_FIELDS,
    Segment,
    SegmentBatch,
    Trajectory,
    as_batch,
    sample_segments_from_rollouts,
)
from birl.serialization import CorruptFileError, load_npz, read_zip_arrays, save_npz, write_zip_arrays

__all__ = ["PreferenceDataset", "Demonstrations"]

PathLike = Union[str, "os.PathLike[str]"]
SegmentsLike = Union[Segment, SegmentBatch, Sequence[Segment]]
_VALID_LABELS = (0.0, 0.5, 1.0)


def validate_labels(labels: Any, n: Optional[int] = None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as float32 ``[N]``; raise ``ValueError`` unless every value is 0, 0.5 or 1."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.dtype == object or not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise TypeError(f"{name} must be numeric, got dtype {y.dtype}")
    y = np.atleast_1d(y.astype(np.float64))
    if y.ndim != 1:
        raise ValueError(f"{name} must have shape [N], got {y.shape}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} must have length {n} (number of pairs), got {y.shape[0]}")
    bad = ~np.isin(y, _VALID_LABELS)
    if bad.any():
        raise ValueError(f"{name} must lie in {{0, 0.5, 1}}, got {y[bad][:5].tolist()} at indices {np.nonzero(bad)[0][:5].tolist()}")
    return y.astype(np.float32)


class PreferenceDataset:
    """Append-only store of labelled segment pairs.

    Args:
        capacity: maximum number of pairs (``None``: unbounded).
        policy: what happens beyond ``capacity``: ``"fifo"`` evicts the oldest pairs, ``"reject"``
            stores nothing more (``add`` returns how many pairs it actually stored).

    The first :meth:`add` fixes the schema (horizon, observation/action shapes and dtypes,
    presence of ``next_obs``); later batches must match it.
    """

    def __init__(self, capacity: Optional[int] = None, policy: str = "fifo") -> None:
        if capacity is not None and (not isinstance(capacity, (int, np.integer)) or capacity <= 0):
            raise ValueError(f"capacity must be a positive int or None, got {capacity!r}")
        if policy not in ("fifo", "reject"):
            raise ValueError(f"policy must be 'fifo' or 'reject', got {policy!r}")
        self.capacity = None if capacity is None else int(capacity)
        self.policy = policy
        self._data: Dict[str, np.ndarray] = {}  # physical storage, first axis = allocated slots
        self._start = 0  # physical index of the oldest pair
        self._size = 0
        self.n_added = 0  # pairs stored so far (including later evicted ones)
        self.n_evicted = 0
        self.n_rejected = 0

    # -- schema --------------------------------------------------------------------------------
    @property
    def has_next_obs(self) -> bool:
        return "next_obs1" in self._data

    @property
    def horizon(self) -> Optional[int]:
        return None if not self._data else int(self._data["true_rewards1"].shape[1])

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"PreferenceDataset(len={len(self)}, capacity={self.capacity}, policy={self.policy!r}, horizon={self.horizon})"

    @staticmethod
    def _side(b: SegmentBatch, side: str) -> Dict[str, np.ndarray]:
        out = {f"{f}{side}": getattr(b, f) for f in SEGMENT_FIELDS if getattr(b, f) is not None}
        out[f"true_rewards{side}"] = out[f"true_rewards{side}"].astype(np.float64)
        return out

    def _check_pair(self, b1: SegmentBatch, b2: SegmentBatch) -> None:
        if len(b1) != len(b2):
            raise ValueError(f"seg1 and seg2 must hold the same number of segments, got {len(b1)} and {len(b2)}")
        for f in ("obs", "acts", "true_rewards"):
            s1, s2 = getattr(b1, f), getattr(b2, f)
            if s1.shape[1:] != s2.shape[1:]:
                raise ValueError(f"seg1.{f} has per-pair shape {s1.shape[1:]} but seg2.{f} has {s2.shape[1:]}")
            if s1.dtype != s2.dtype:
                raise ValueError(f"seg1.{f} has dtype {s1.dtype} but seg2.{f} has {s2.dtype}")
        for f in ("next_obs", "absorbing"):
            if (getattr(b1, f) is None) != (getattr(b2, f) is None):
                raise ValueError(f"seg1 and seg2 must both carry {f} or both not")

    def _check_schema(self, new: Dict[str, np.ndarray]) -> None:
        if not self._data:
            return
        if set(new) != set(self._data):
            missing, extra = sorted(set(self._data) - set(new)), sorted(set(new) - set(self._data))
            raise ValueError(f"new pairs do not match the dataset's fields: missing {missing}, unexpected {extra}")
        h_new, h_old = new["true_rewards1"].shape[1], self._data["true_rewards1"].shape[1]
        if h_new != h_old:
            raise ValueError(f"segments have horizon {h_new}, the dataset stores horizon {h_old}")
        for k, v in new.items():
            stored = self._data[k]
            if v.shape[1:] != stored.shape[1:]:
                raise ValueError(f"{k} has per-pair shape {v.shape[1:]}, the dataset stores {stored.shape[1:]}")
            if not np.can_cast(v.dtype, stored.dtype, casting="same_kind"):
                raise ValueError(f"{k} has dtype {v.dtype}, which cannot be stored as the dataset's {stored.dtype}")

    # -- storage -------------------------------------------------------------------------------
    def _order(self) -> np.ndarray:
        alloc = next(iter(self._data.values())).shape[0] if self._data else 0
        return (self._start + np.arange(self._size)) % max(alloc, 1)

    def _allocate(self, template: Dict[str, np.ndarray], slots: int) -> None:
        """(Re)allocate ``slots`` rows with the pairs kept in logical order from row 0."""
        order = self._order()
        new = {}
        for k, v in template.items():
            arr = np.empty((slots,) + v.shape[1:], dtype=self._data[k].dtype if k in self._data else v.dtype)
            if k in self._data and self._size:
                arr[: self._size] = self._data[k][order]
            new[k] = arr
        self._data, self._start = new, 0

    def _store(self, new: Dict[str, np.ndarray], n: int) -> int:
        if n == 0:
            if not self._data:
                self._allocate(new, 0)
            return 0
        cap = self.capacity
        if cap is not None:
            if self.policy == "reject":
                room = cap - self._size
                self.n_rejected += max(0, n - room)
                n = min(n, room)
                new = {k: v[:n] for k, v in new.items()}
            elif n > cap:  # fifo: only the newest `cap` of this batch can survive
                self.n_evicted += n - cap
                new = {k: v[n - cap :] for k, v in new.items()}
                self.n_added += n - cap
                n = cap
            if n == 0:
                return 0
            if not self._data or next(iter(self._data.values())).shape[0] < cap:
                self._allocate(new, cap)
            alloc = cap
        else:
            alloc = next(iter(self._data.values())).shape[0] if self._data else 0
            if self._size + n > alloc:
                self._allocate(new, max(2 * alloc, self._size + n, 16))
                alloc = next(iter(self._data.values())).shape[0]
        pos = (self._start + self._size + np.arange(n)) % alloc
        for k, v in new.items():
            self._data[k][pos] = v
        overflow = max(0, self._size + n - alloc)
        self._start = (self._start + overflow) % alloc
        self.n_evicted += overflow
        self._size = min(alloc, self._size + n)
        self.n_added += n
        return n

    def add(self, seg1: SegmentsLike, seg2: SegmentsLike, labels: Any, keep: Optional[Any] = None) -> int:
        """Append pairs ``(seg1[i], seg2[i], labels[i])``; returns how many were stored.

        Args:
            seg1, seg2: :class:`Segment`, list of them or :class:`SegmentBatch` (``N`` each).
            labels: ``[N]`` values in ``{0, 0.5, 1}``; ``1`` means ``seg1`` preferred.
            keep: optional bool ``[N]`` mask (e.g. from :meth:`SyntheticTeacher.label`); pairs
                with ``False`` are dropped before storing.
        """
        b1, b2 = as_batch(seg1, "seg1"), as_batch(seg2, "seg2")
        self._check_pair(b1, b2)
        y = validate_labels(labels, len(b1))
        new = {**self._side(b1, "1"), **self._side(b2, "2"), "labels": y}
        if keep is not None:
            keep = np.asarray(keep)
            if keep.dtype != bool or keep.shape != (len(b1),):
                raise ValueError(f"keep must be a bool array of shape ({len(b1)},), got {keep.dtype} {keep.shape}")
            new = {k: v[keep] for k, v in new.items()}
        self._check_schema(new)
        return self._store(new, int(new["labels"].shape[0]))

    # -- access --------------------------------------------------------------------------------
    def arrays(self) -> Dict[str, np.ndarray]:
        """Every stored array in insertion order (copies): ``obs1``, ``acts1``, ..., ``labels``."""
        order = self._order()
        return {k: v[order] for k, v in self._data.items()}

    @property
    def labels(self) -> np.ndarray:
        return self._data["labels"][self._order()] if self._data else np.zeros(0, np.float32)

    def _batch(self, rows: np.ndarray, side: str) -> SegmentBatch:
        return SegmentBatch(**{f: (self._data[f + side][rows] if f + side in self._data else None) for f in SEGMENT_FIELDS})

    def __getitem__(self, idx: Any) -> Tuple[SegmentBatch, SegmentBatch, np.ndarray]:
        """``(seg1, seg2, labels)`` for an int, slice, index array or mask (logical order)."""
        if not self._data:
            raise IndexError("the dataset is empty")
        rows = np.atleast_1d(self._order()[idx])
        return self._batch(rows, "1"), self._batch(rows, "2"), self._data["labels"][rows]

    def sample(self, batch_size: int, rng: Union[np.random.Generator, int, None] = None) -> Tuple[SegmentBatch, SegmentBatch, np.ndarray]:
        """``batch_size`` pairs drawn uniformly with replacement."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty PreferenceDataset")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        return self[rng.integers(0, len(self), size=batch_size)]

    def iter_batches(
        self, batch_size: int, rng: Union[np.random.Generator, int, None] = None, shuffle: bool = True
    ) -> Iterator[Tuple[SegmentBatch, SegmentBatch, np.ndarray]]:
        """One epoch of mini-batches (the last one may be smaller)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        idx = np.arange(len(self))
        if shuffle:
            (rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)).shuffle(idx)
        for i in range(0, len(idx), batch_size):
            yield self[idx[i : i + batch_size]]

    # -- persistence ---------------------------------------------------------------------------
    def _stored(self) -> Dict[str, np.ndarray]:
        """The stored arrays in insertion order: views while the oldest pair is in row 0 (always
        so without eviction), copies otherwise."""
        if self._start == 0:
            return {k: v[: self._size] for k, v in self._data.items()}
        return self.arrays()

    def _meta(self) -> Dict[str, Any]:
        return {
            "kind": "PreferenceDataset",
            "capacity": self.capacity,
            "policy": self.policy,
            "size": self._size,
            "n_added": self.n_added,
            "n_evicted": self.n_evicted,
            "n_rejected": self.n_rejected,
            "has_schema": bool(self._data),
        }

    @classmethod
    def _from_stored(cls, arrays: Dict[str, np.ndarray], meta: Dict[str, Any], source: str) -> "PreferenceDataset":
        """Rebuild a dataset from :meth:`_stored` arrays and :meth:`_meta` (``source`` names the
        file in errors).  Arrays that fill the allocation exactly are adopted, not copied."""
        if meta.get("kind") != "PreferenceDataset":
            raise CorruptFileError(f"{source} holds a {meta.get('kind')!r}, not a PreferenceDataset")
        ds = cls(meta["capacity"], meta["policy"])
        n = int(meta["size"])
        if meta["has_schema"]:
            if "labels" not in arrays or any(v.shape[0] != n for v in arrays.values()):
                raise CorruptFileError(f"{source}: arrays do not all have length {n}")
            slots = ds.capacity if ds.capacity is not None else n
            if slots == n:
                ds._data = dict(arrays)
            else:
                ds._allocate(arrays, slots)
                for k, v in arrays.items():
                    ds._data[k][:n] = v
            ds._size = n
        ds.n_added, ds.n_evicted, ds.n_rejected = int(meta["n_added"]), int(meta["n_evicted"]), int(meta["n_rejected"])
        return ds

    def save(self, path: PathLike) -> None:
        """Atomically write every array (insertion order) and the settings to an ``.npz`` file."""
        save_npz(path, self._stored(), self._meta())

    @classmethod
    def load(cls, path: PathLike) -> "PreferenceDataset":
        """Read a dataset written by :meth:`save` (raises ``CorruptFileError`` on damage)."""
        arrays, meta = load_npz(path)
        return cls._from_stored(arrays, meta, repr(os.fspath(path)))

    def write_to_zip(self, archive: zipfile.ZipFile, prefix: str = "preferences/") -> None:
        """Store the dataset as ``<prefix><array>.npy`` members (streamed, uncompressed) and
        ``<prefix>meta.json`` of an open, writable zip archive (e.g. an agent's save file)."""
        write_zip_arrays(archive, prefix, self._stored(), self._meta())

    @classmethod
    def read_from_zip(cls, archive: zipfile.ZipFile, prefix: str = "preferences/") -> "PreferenceDataset":
        """Read a dataset stored by :meth:`write_to_zip`.

        Raises:
            KeyError: nothing is stored under ``prefix``.
            CorruptFileError: a member is missing or damaged.
        """
        arrays, meta = read_zip_arrays(archive, prefix)
        return cls._from_stored(arrays, meta, f"{archive.filename or 'the zip archive'!r} ({prefix})")


# --------------------------------------------------------------------------------------------
# Demonstrations
# --------------------------------------------------------------------------------------------


def _act(policy: Any, obs: Any, deterministic: bool) -> Any:
    if hasattr(policy, "predict"):
        out = policy.predict(obs, deterministic=deterministic)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError("policy.predict must return (action, state) like Stable-Baselines3")
        return out[0]
    if callable(policy):
        return policy(obs)
    raise TypeError(f"policy must be callable obs -> action or have .predict(obs, deterministic), got {type(policy).__name__}")


class Demonstrations:
    """A list of expert episodes (:class:`Trajectory`) for the ML-IRL demonstration loss."""

    def __init__(self, trajectories: Optional[Sequence[Trajectory]] = None) -> None:
        self.trajectories: List[Trajectory] = []
        for t in trajectories or []:
            self.add(t)

    def add(self, trajectory: Trajectory) -> None:
        if not isinstance(trajectory, Trajectory):
            raise TypeError(f"trajectory must be a Trajectory, got {type(trajectory).__name__}")
        if self.trajectories:
            ref = self.trajectories[0]
            for f in ("obs", "acts"):
                a, b = getattr(trajectory, f), getattr(ref, f)
                if a.shape[1:] != b.shape[1:]:
                    raise ValueError(f"trajectory.{f} has per-step shape {a.shape[1:]}, earlier trajectories have {b.shape[1:]}")
        self.trajectories.append(trajectory)

    def __len__(self) -> int:
        return len(self.trajectories)

    def __getitem__(self, i: int) -> Trajectory:
        return self.trajectories[i]

    def __iter__(self) -> Iterator[Trajectory]:
        return iter(self.trajectories)

    def __repr__(self) -> str:
        return f"Demonstrations(episodes={len(self)}, transitions={self.n_transitions})"

    @property
    def n_transitions(self) -> int:
        return int(sum(len(t) for t in self.trajectories))

    def returns(self) -> np.ndarray:
        """Undiscounted true return of every episode."""
        return np.array([t.rewards.sum() for t in self.trajectories], dtype=np.float64)

    def transitions(self) -> Dict[str, np.ndarray]:
        """Flat arrays over all episodes: ``obs``, ``acts``, ``next_obs``, ``rewards``, ``dones``,
        ``terminated`` (per step: episode terminated on this step) and ``episode_ids``."""
        if not self.trajectories:
            raise ValueError("no trajectories")
        ts = self.trajectories
        term = [np.zeros(len(t), bool) for t in ts]
        for t, m in zip(ts, term):
            if len(t) and t.terminated:
                m[-1] = True
        return {
            "obs": np.concatenate([t.obs[:-1] for t in ts]),
            "acts": np.concatenate([t.acts for t in ts]),
            "next_obs": np.concatenate([t.obs[1:] for t in ts]),
            "rewards": np.concatenate([t.rewards for t in ts]),
            "dones": np.concatenate([t.dones for t in ts]),
            "terminated": np.concatenate(term),
            "episode_ids": np.concatenate([np.full(len(t), i, np.int64) for i, t in enumerate(ts)]),
        }

    def sample_segments(
        self, horizon: int, n: int, rng: Union[np.random.Generator, int, None] = None, replace: bool = False, absorbing: bool = False
    ) -> SegmentBatch:
        """Fragments of the demonstrations (see :func:`sample_segments_from_rollouts`; ``absorbing``:
        fragments may run past a termination into the absorbing state)."""
        return sample_segments_from_rollouts(self.trajectories, horizon=horizon, n=n, rng=rng, replace=replace, absorbing=absorbing)

    @classmethod
    def collect(
        cls,
        policy: Union[Callable[[Any], Any], Any],
        env: Any,
        n_episodes: int,
        seed: Optional[int] = None,
        deterministic: bool = True,
        max_steps: Optional[int] = None,
    ) -> "Demonstrations":
        """Roll out ``policy`` for ``n_episodes`` in ``env`` (gymnasium API, duck-typed).

        Args:
            policy: a callable ``obs -> action`` or an object with ``predict(obs, deterministic)``
                returning ``(action, state)`` (a Stable-Baselines3 model).
            env: a single (non-vectorised) environment: ``reset(seed=...) -> (obs, info)`` and
                ``step(a) -> (obs, reward, terminated, truncated, info)``.
            n_episodes: number of episodes.
            seed: passed to the first ``reset``; later resets continue the env's RNG.
            deterministic: forwarded to ``predict``.
            max_steps: optional cap per episode (marks the episode truncated).
        """
        if not isinstance(n_episodes, (int, np.integer)) or n_episodes <= 0:
            raise ValueError(f"n_episodes must be a positive int, got {n_episodes!r}")
        if max_steps is not None and max_steps <= 0:
            raise ValueError(f"max_steps must be positive or None, got {max_steps!r}")
        if not (hasattr(env, "reset") and hasattr(env, "step")):
            raise TypeError(f"env must have reset() and step() (gymnasium API), got {type(env).__name__}")
        demos = cls()
        for ep in range(int(n_episodes)):
            out = env.reset(seed=seed) if ep == 0 else env.reset()
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError("env.reset must return (obs, info) (gymnasium API); vectorised envs are not supported")
            obs = out[0]
            observations, actions, rewards = [np.asarray(obs)], [], []
            terminated = truncated = False
            while not (terminated or truncated):
                action = _act(policy, obs, deterministic)
                step = env.step(action)
                if not (isinstance(step, tuple) and len(step) == 5):
                    raise TypeError("env.step must return (obs, reward, terminated, truncated, info) (gymnasium API)")
                obs, reward, terminated, truncated, _ = step
                observations.append(np.asarray(obs))
                actions.append(np.asarray(action))
                rewards.append(float(reward))
                if max_steps is not None and len(rewards) >= max_steps and not terminated:
                    truncated = True
            demos.add(Trajectory(np.stack(observations), np.stack(actions), np.asarray(rewards), bool(terminated), bool(truncated)))
        return demos

    @classmethod
    def from_minari(cls, dataset_id: str) -> "Demonstrations":
        """Load a locally available Minari dataset (nothing is downloaded).

        Raises ``ImportError`` when ``minari`` is not installed.
        """
        try:
            import minari  # noqa: PLC0415 (optional dependency)
        except ImportError:
            raise ImportError("Demonstrations.from_minari needs the optional package minari: pip install minari") from None
        dataset = minari.load_dataset(dataset_id, download=False)
        demos = cls()
        for i, ep in enumerate(dataset.iterate_episodes()):
            if isinstance(ep.observations, dict) or isinstance(ep.actions, dict):
                raise TypeError(f"{dataset_id}: episode {i} has dict observations/actions; only array spaces are supported")
            demos.add(Trajectory(ep.observations, ep.actions, ep.rewards, bool(ep.terminations[-1]), bool(ep.truncations[-1])))
        return demos

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Atomically write all episodes to one ``.npz`` file (exact round trip)."""
        ts = self.trajectories
        arrays: Dict[str, np.ndarray] = {}
        if ts:
            arrays = {
                "obs": np.concatenate([t.obs for t in ts]),
                "acts": np.concatenate([t.acts for t in ts]),
                "rewards": np.concatenate([t.rewards for t in ts]),
                "lengths": np.array([len(t) for t in ts], np.int64),
                "terminated": np.array([t.terminated for t in ts], bool),
                "truncated": np.array([t.truncated for t in ts], bool),
            }
        save_npz(path, arrays, {"kind": "Demonstrations", "n_episodes": len(ts)})

    @classmethod
    def load(cls, path: PathLike) -> "Demonstrations":
        arrays, meta = load_npz(path)
        if meta.get("kind") != "Demonstrations":
            raise CorruptFileError(f"{os.fspath(path)!r} holds a {meta.get('kind')!r}, not Demonstrations")
        demos = cls()
        if meta["n_episodes"] == 0:
            return demos
        lengths = arrays["lengths"]
        if len(lengths) != meta["n_episodes"] or arrays["obs"].shape[0] != lengths.sum() + len(lengths):
            raise CorruptFileError(f"{os.fspath(path)!r}: episode lengths do not match the stored arrays")
        o_end, a_end = np.cumsum(lengths + 1), np.cumsum(lengths)
        for i, t in enumerate(lengths):
            demos.add(
                Trajectory(
                    arrays["obs"][o_end[i] - t - 1 : o_end[i]], arrays["acts"][a_end[i] - t : a_end[i]],
                    arrays["rewards"][a_end[i] - t : a_end[i]], bool(arrays["terminated"][i]), bool(arrays["truncated"][i]),
                )  # fmt: skip
            )
        return demos
