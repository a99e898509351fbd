"""Human preference feedback through a run directory shared with the labelling page.

A :class:`HumanTeacher` has the interface of :class:`birl.feedback.SyntheticTeacher`
(``label(seg1, seg2) -> (labels, keep)``), but its answers come from a person using the local
labelling page (``python -m agents.label --run RUN_DIR``).  The two processes talk only through
files in ``RUN_DIR``, managed by :class:`LabelStore`:

====================  ==========================================================================
``queries/<id>.npz``  one pending or answered pair: both segments and their rendered frames
                      (written atomically, never modified afterwards)
``answers.jsonl``     the append-only answer log, one JSON object per line
                      (``{"query_id", "choice", "label", "time"}``), fsynced after every answer;
                      the first answer to a query wins
``preferences.npz``   every kept answer as a :class:`PreferenceDataset`, rebuilt from the log and
                      replaced atomically after every answer (``PreferenceDataset.load`` reads it)
====================  ==========================================================================

The answer log is the record of truth.  A crash can at worst leave one incomplete last line,
which readers skip and the next writer terminates before appending, so no earlier (or later)
answer is lost; ``preferences.npz`` is rebuilt from the log whenever the page starts.

Choices: ``left`` (label ``1``: the first segment preferred, as everywhere in
:mod:`birl.feedback`), ``right`` (``0``), ``equal`` (``0.5``) and ``skip`` (answered, not kept).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from birl.feedback.datasets import PreferenceDataset
from birl.feedback.segments import SEGMENT_FIELDS, Segment, SegmentBatch, as_batch
from birl.serialization import _NPZ_META_KEY, FORMAT_VERSION, CorruptFileError, atomic_open, load_npz

try:  # advisory locks between processes (POSIX); threads are serialised by a Lock either way
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["CHOICES", "HumanQuery", "LabelStore", "HumanTeacher", "AnswerConflictError", "observation_frames"]

PathLike = Union[str, "os.PathLike[str]"]
SegmentsLike = Union[Segment, SegmentBatch, Sequence[Segment]]
Renderer = Callable[[np.ndarray], np.ndarray]

#: answer name -> stored label (``None``: skipped, answered but not kept)
CHOICES: Dict[str, Optional[float]] = {"left": 1.0, "right": 0.0, "equal": 0.5, "skip": None}
_QUERY_ID = re.compile(r"^[0-9a-f]{1,32}(-[0-9a-f]{1,32})*$")


class AnswerConflictError(ValueError):
    """The query already has an answer (the first answer wins)."""


@dataclass
class HumanQuery:
    """One stored pair: ``seg1`` is shown on the left, ``seg2`` on the right; ``frames*`` are
    ``uint8 [H, height, width, 3]``."""

    query_id: str
    seg1: SegmentBatch
    seg2: SegmentBatch
    frames1: np.ndarray
    frames2: np.ndarray
    created: float


def _check_frames(frames: Any, horizon: int, name: str) -> np.ndarray:
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3 or f.shape[0] != horizon:
        raise ValueError(f"{name} must be uint8 frames of shape [H={horizon}, height, width, 3], got {f.dtype} {f.shape}")
    return f


def observation_frames(obs: np.ndarray, scale: Optional[np.ndarray] = None, height: int = 96, bar: int = 8) -> np.ndarray:
    """Fallback frames when no renderer is given: each step's (flattened) observation as bars.

    Args:
        obs: ``[H, ...]`` observations of one segment.
        scale: per-dimension ``|value|`` that fills half the height (default: the segment's own
            maximum); pass one shared scale for both segments of a pair to keep them comparable.
        height, bar: frame height and bar width in pixels (at most 64 dimensions are drawn).
    """
    x = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)[:, :64]
    if scale is None:
        scale = np.abs(x).max(0)
    scale = np.where(np.asarray(scale)[: x.shape[1]] > 0, np.asarray(scale)[: x.shape[1]], 1.0)
    h, d, mid = len(x), x.shape[1], height // 2
    frames = np.full((h, height, d * bar, 3), 255, np.uint8)
    frames[:, mid, :] = 160  # zero line
    rows = np.arange(height)[None, :, None]
    top = np.round(mid - np.clip(x / scale, -1, 1) * (mid - 2)).astype(int)[:, None, :]  # [H, 1, d]
    lit = (rows >= np.minimum(top, mid)) & (rows <= np.maximum(top, mid))  # [H, height, d]
    lit = np.repeat(lit, bar, axis=2)
    lit[:, :, bar - 1 :: bar] = False  # a gap between bars
    frames[lit] = (40, 90, 200)
    return frames


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for the block's duration."""
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LabelStore:
    """The files of one labelling run (see the module docstring).  Safe to share between the
    training process (writes queries, reads answers) and the page (reads queries, writes answers).

    Args:
        run_dir: the run directory; created (with parents) if missing.
    """

    def __init__(self, run_dir: PathLike) -> None:
        if not isinstance(run_dir, (str, os.PathLike)):
            raise TypeError(f"run_dir must be a path, got {type(run_dir).__name__}")
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise NotADirectoryError(f"run_dir {self.run_dir!r} exists and is not a directory")
        self.query_dir = os.path.join(self.run_dir, "queries")
        self.answers_path = os.path.join(self.run_dir, "answers.jsonl")
        self.dataset_path = os.path.join(self.run_dir, "preferences.npz")
        self._lock_path = os.path.join(self.run_dir, ".answers.lock")
        os.makedirs(self.query_dir, exist_ok=True)
        self._thread_lock = threading.Lock()
        self._segments: Dict[str, Tuple[SegmentBatch, SegmentBatch]] = {}

    def __repr__(self) -> str:
        return f"LabelStore({self.run_dir!r})"

    # -- queries -------------------------------------------------------------------------------
    def _query_path(self, query_id: str) -> str:
        if not isinstance(query_id, str) or not _QUERY_ID.match(query_id):
            raise KeyError(f"query_id {query_id!r} is not a valid query id")
        return os.path.join(self.query_dir, query_id + ".npz")

    def add_query(self, seg1: Segment, seg2: Segment, frames1: np.ndarray, frames2: np.ndarray) -> str:
        """Store one pair with its frames atomically; returns the new query id (sortable by time)."""
        b1, b2 = as_batch(seg1, "seg1"), as_batch(seg2, "seg2")
        if len(b1) != 1 or len(b2) != 1:
            raise ValueError(f"add_query stores one pair, got {len(b1)} and {len(b2)} segments")
        frames1 = _check_frames(frames1, b1.horizon, "frames1")
        frames2 = _check_frames(frames2, b2.horizon, "frames2")
        query_id = f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"
        arrays = {"frames1": frames1, "frames2": frames2}
        for side, b in (("1", b1), ("2", b2)):
            arrays.update({f + side: getattr(b, f) for f in SEGMENT_FIELDS if getattr(b, f) is not None})
        meta = {"format_version": FORMAT_VERSION, "kind": "HumanQuery", "query_id": query_id, "created": time.time()}
        arrays[_NPZ_META_KEY] = np.array(json.dumps(meta, sort_keys=True))
        with atomic_open(self._query_path(query_id), "wb") as f:  # compressed: frames shrink a lot
            np.savez_compressed(f, **arrays)
        return query_id

    def query_ids(self) -> List[str]:
        """Every stored query id, oldest first (temporary files of unfinished writes are ignored)."""
        names = (n[:-4] for n in os.listdir(self.query_dir) if n.endswith(".npz") and not n.startswith("."))
        return sorted(n for n in names if _QUERY_ID.match(n))

    def has_query(self, query_id: str) -> bool:
        try:
            return os.path.isfile(self._query_path(query_id))
        except KeyError:
            return False

    def load_query(self, query_id: str) -> HumanQuery:
        """The stored pair ``query_id`` with its frames.  ``KeyError`` if unknown."""
        path = self._query_path(query_id)
        if not os.path.isfile(path):
            raise KeyError(f"query_id {query_id!r}: no such query in {self.query_dir!r}")
        arrays, meta = load_npz(path)
        if meta.get("kind") != "HumanQuery":
            raise CorruptFileError(f"{path!r} holds a {meta.get('kind')!r}, not a HumanQuery")

        def side(s: str) -> SegmentBatch:
            return SegmentBatch(**{f: arrays.get(f + s) for f in SEGMENT_FIELDS})

        return HumanQuery(query_id, side("1"), side("2"), arrays["frames1"], arrays["frames2"], float(meta["created"]))

    def segments(self, query_id: str) -> Tuple[SegmentBatch, SegmentBatch]:
        """The pair ``query_id`` without frames (cached in memory: query files never change)."""
        if query_id not in self._segments:
            q = self.load_query(query_id)
            self._segments[query_id] = (q.seg1, q.seg2)
        return self._segments[query_id]

    # -- answers -------------------------------------------------------------------------------
    def answers(self) -> Dict[str, Optional[float]]:
        """``{query_id: label or None (skipped)}`` from the log, first answer per query, in log
        order.  Incomplete or unreadable lines (a crash mid-write) are skipped."""
        out: Dict[str, Optional[float]] = {}
        try:
            with open(self.answers_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return out
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is incomplete
            try:
                entry = json.loads(line)
                qid, label = entry["query_id"], entry["label"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(qid, str) and qid not in out and (label is None or label in (0.0, 0.5, 1.0)):
                out[qid] = None if label is None else float(label)
        return out

    def pending(self) -> List[str]:
        """Ids of stored queries without an answer, oldest first."""
        done = self.answers()
        return [q for q in self.query_ids() if q not in done]

    def progress(self) -> Dict[str, int]:
        """``total`` queries, ``answered`` (including ``skipped``), ``skipped``, ``pending``."""
        ids, done = self.query_ids(), self.answers()
        answered = [q for q in ids if q in done]
        skipped = sum(done[q] is None for q in answered)
        return {"total": len(ids), "answered": len(answered), "skipped": skipped, "pending": len(ids) - len(answered)}

    def record(self, query_id: str, choice: str) -> Optional[float]:
        """Durably record the answer ``choice`` (a key of :data:`CHOICES`) to ``query_id``, then
        rebuild ``preferences.npz``; returns the stored label (``None`` for ``skip``).

        Raises:
            KeyError: unknown ``query_id``.
            ValueError: ``choice`` is not one of :data:`CHOICES`.
            AnswerConflictError: the query was answered before (its first answer stands).
        """
        if not isinstance(choice, str) or choice not in CHOICES:
            raise ValueError(f"choice must be one of {sorted(CHOICES)}, got {choice!r}")
        if not self.has_query(query_id):
            raise KeyError(f"query_id {query_id!r}: no such query in {self.query_dir!r}")
        label = CHOICES[choice]
        with self._thread_lock, _locked(self._lock_path):
            if query_id in self.answers():
                raise AnswerConflictError(f"query_id {query_id!r} is already answered; the first answer stands")
            line = json.dumps({"query_id": query_id, "choice": choice, "label": label, "time": time.time()})
            created = not os.path.exists(self.answers_path)
            with open(self.answers_path, "ab") as f:
                if f.tell() > 0:  # terminate an incomplete last line left by a crash
                    with open(self.answers_path, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":
                            f.write(b"\n")
                f.write(line.encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            if created:
                _fsync_dir(self.run_dir)
            self._rebuild_locked()
        return label

    def rebuild_dataset(self) -> PreferenceDataset:
        """Write ``preferences.npz`` from the answer log (kept answers, log order) atomically."""
        with self._thread_lock, _locked(self._lock_path):
            return self._rebuild_locked()

    def _rebuild_locked(self) -> PreferenceDataset:
        ds = PreferenceDataset()
        for qid, label in self.answers().items():
            if label is None or not self.has_query(qid):
                continue
            ds.add(*self.segments(qid), np.array([label], np.float32))
        ds.save(self.dataset_path)
        return ds

    def load_dataset(self) -> PreferenceDataset:
        """The labelled pairs so far (rebuilt from the log if the dataset file is missing)."""
        if not os.path.isfile(self.dataset_path):
            return self.rebuild_dataset()
        return PreferenceDataset.load(self.dataset_path)


class HumanTeacher:
    """A person labels preferences on the local page; same interface as ``SyntheticTeacher``.

    :meth:`label` stores every pair as a pending query in ``run_dir`` (with frames from
    ``renderer``), then waits for the answers given on the page
    (``python -m agents.label --run run_dir``).

    Args:
        run_dir: the run directory shared with the page (created if missing).
        renderer: ``obs [H, ...] -> uint8 frames [H, height, width, 3]`` for one segment, e.g.
            :func:`envs.render.make_renderer`; ``None`` draws each observation as bars.
        wait: ``None`` blocks until every pair is answered; a number of seconds returns what is
            answered by then (``keep=False`` for the rest, which stay pending: answers given
            later are returned by :meth:`drain`).  ``0`` never waits.
        poll_interval: seconds between reads of the answer log while waiting.
        adopt_pending: treat queries left pending in ``run_dir`` by an earlier process (a crash,
            a restart) as outstanding, so that their answers reach :meth:`drain` too.
        verbose: print a line to stderr when waiting for the person.
    """

    def __init__(
        self,
        run_dir: PathLike,
        renderer: Optional[Renderer] = None,
        wait: Optional[float] = None,
        poll_interval: float = 1.0,
        adopt_pending: bool = True,
        verbose: bool = True,
    ) -> None:
        if renderer is not None and not callable(renderer):
            raise TypeError(f"renderer must be callable obs -> frames or None, got {type(renderer).__name__}")
        if wait is not None and not (isinstance(wait, (int, float)) and math.isfinite(wait) and wait >= 0):
            raise ValueError(f"wait must be None (block) or a number of seconds >= 0, got {wait!r}")
        if not (isinstance(poll_interval, (int, float)) and poll_interval > 0):
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        self.store = LabelStore(run_dir)
        self.run_dir = self.store.run_dir
        self.renderer, self.wait, self.poll_interval, self.verbose = renderer, wait, float(poll_interval), bool(verbose)
        #: query ids whose label() call returned before they were answered (read by drain())
        self.outstanding: List[str] = self.store.pending() if adopt_pending else []

    def __repr__(self) -> str:
        return f"HumanTeacher({self.run_dir!r}, wait={self.wait}, outstanding={len(self.outstanding)})"

    def __getstate__(self) -> Dict[str, Any]:
        """Pickling (e.g. by ``model.save``) keeps the run directory and the outstanding ids; the
        renderer (often holding an env) is dropped: set ``teacher.renderer`` again after loading."""
        state = self.__dict__.copy()
        state["renderer"] = None
        state.pop("store")
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.store = LabelStore(self.run_dir)

    def _frames(self, b1: SegmentBatch, b2: SegmentBatch, i: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.renderer is None:
            both = np.concatenate([b1.obs[i].reshape(b1.horizon, -1), b2.obs[i].reshape(b2.horizon, -1)])
            scale = np.abs(both.astype(np.float64)).max(0)
            out = [observation_frames(b1.obs[i], scale), observation_frames(b2.obs[i], scale)]
        else:
            out = []
            for b in (b1, b2):
                try:
                    out.append(_check_frames(self.renderer(b.obs[i]), b.horizon, "renderer(obs)"))
                except ValueError as err:
                    raise ValueError(f"renderer {self.renderer!r} returned bad frames: {err}") from err
        for k, b in enumerate((b1, b2)):
            if b.absorbing is not None:  # after the episode ended: the last frame, greyed out
                out[k] = np.where(b.absorbing[i][:, None, None, None], out[k] // 3 + 128, out[k]).astype(np.uint8)
        return out[0], out[1]

    def label(self, seg1: SegmentsLike, seg2: SegmentsLike) -> Tuple[np.ndarray, np.ndarray]:
        """Ask the person about ``N`` pairs (``seg1[i]`` left, ``seg2[i]`` right).

        Returns:
            ``(labels, keep)`` like :meth:`SyntheticTeacher.label`: float32 ``[N]`` in
            ``{0, 0.5, 1}`` and a bool ``[N]`` mask, ``False`` for skipped pairs and for pairs not
            answered within ``wait`` seconds (those stay pending; see :meth:`drain`).
        """
        b1, b2 = as_batch(seg1, "seg1"), as_batch(seg2, "seg2")
        if len(b1) != len(b2):
            raise ValueError(f"seg1 and seg2 must hold the same number of segments, got {len(b1)} and {len(b2)}")
        ids = []
        for i in range(len(b1)):
            f1, f2 = self._frames(b1, b2, i)
            ids.append(self.store.add_query(b1[i : i + 1], b2[i : i + 1], f1, f2))
        answers = self._wait_for(ids)
        labels = np.zeros(len(ids), np.float32)
        keep = np.zeros(len(ids), bool)
        for i, qid in enumerate(ids):
            if qid not in answers:
                self.outstanding.append(qid)
            elif answers[qid] is not None:
                labels[i], keep[i] = answers[qid], True
        return labels, keep

    def _wait_for(self, ids: List[str]) -> Dict[str, Optional[float]]:
        deadline = None if self.wait is None else time.monotonic() + self.wait
        told = False
        while True:
            answers = self.store.answers()
            missing = [q for q in ids if q not in answers]
            now = time.monotonic()
            if not missing or (deadline is not None and now >= deadline):
                return answers
            if self.verbose and not told:
                until = "" if deadline is None else f" (up to {self.wait:g} s)"
                print(
                    f"HumanTeacher: waiting{until} for {len(missing)} label(s); label them with\n"
                    f"    python -m agents.label --run {self.run_dir}",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
                told = True
            time.sleep(self.poll_interval if deadline is None else min(self.poll_interval, deadline - now))

    def drain(self) -> Optional[Tuple[SegmentBatch, SegmentBatch, np.ndarray]]:
        """Pairs answered since their :meth:`label` call returned: ``(seg1, seg2, labels)`` of
        the kept ones (skips are dropped), or ``None`` if there are none.  Each is returned once."""
        if not self.outstanding:
            return None
        answers = self.store.answers()
        done = [q for q in self.outstanding if q in answers]
        self.outstanding = [q for q in self.outstanding if q not in answers]
        kept = [q for q in done if answers[q] is not None]
        if not kept:
            return None
        pairs = [self.store.segments(q) for q in kept]
        s1 = SegmentBatch.concatenate([p[0] for p in pairs])
        s2 = SegmentBatch.concatenate([p[1] for p in pairs])
        return s1, s2, np.array([answers[q] for q in kept], np.float32)
