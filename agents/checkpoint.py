"""Periodic checkpoints of a training run and resumption after a crash or a kill.

A checkpoint is one file ``checkpoint_<num_timesteps>.pt`` (written with
:func:`birl.serialization.save_state`: atomic temp file + fsync + :func:`os.replace`, a SHA-256
checksum over every tensor, a container format version) holding

* the agent zip produced by SB3's ``save`` (policy, critics, optimiser states, entropy
  coefficient, and for bilevel agents the reward model and its optimiser, the successor critic,
  the dynamics ensemble of M-SoBiRL, the preference dataset and the feedback source, the step
  counters ``_n_outer``, ``_n_asked``, ...), as raw bytes;
* what SB3's ``save`` leaves out on purpose (``_excluded_save_params``) but a resumed run needs:
  the state of every ``numpy``/``torch`` generator attribute of the agent (``_outer_rng``,
  M-SoBiRL's ``_model_rng``), the STORM momentum ``_storm_state``, the demonstration arrays
  ``_demo_data``;
* the global RNG states (``random``, ``numpy``, ``torch``, CUDA), the agent's action-space RNG,
  the feedback source's generators (e.g. :class:`birl.feedback.SyntheticTeacher`'s ``rng``) and
  the environments' ``np_random`` where the VecEnv exposes them;
* counters (``num_timesteps``, ``_episode_num``, the total of the current ``learn`` call,
  ``_outer_total``, ...), the recent episode statistics and free-form JSON ``metadata`` (the
  command line of :mod:`agents.train`);
* optionally the VecNormalize statistics.

The replay buffer (``save_replay_buffer=True``) goes to a sidecar file
``checkpoint_<num_timesteps>.replay_buffer.pkl`` (SB3's pickle format, streamed to disk, so a
large buffer is never held twice in memory), written atomically *before* the main file, whose
size and SHA-256 the main file records.  A checkpoint exists once its main file exists.

Loading (:func:`load_checkpoint`) turns a truncated or damaged file into
:class:`birl.serialization.CorruptFileError` and a checkpoint written by another layout version
into :class:`CheckpointFormatError`; :func:`load_latest_checkpoint` on a folder falls back to the
previous good checkpoint with a warning.  :class:`BilevelCheckpointCallback` keeps the newest
``keep`` checkpoints and deletes older ones only after the new one is complete.

Resuming: load the agent (:meth:`Checkpoint.load_agent`), then ``learn`` with
:class:`ResumeCallback`, which restores the counters and RNG states *after* SB3's
``_setup_learn`` (which resets them) and before the first step; :func:`resume_training` does
both.  ``python -m agents.train --resume PATH`` goes through rl_zoo3's ``--trained-agent``
(:meth:`Checkpoint.extract`).  Not restorable in general: the environments' physical state
(the resumed run starts new episodes) and the ``branch`` estimator's env snapshots.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import pickle
import random
import re
import warnings
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from birl.serialization import CorruptFileError, atomic_open, load_state, save_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointFormatError",
    "Checkpoint",
    "BilevelCheckpointCallback",
    "ResumeCallback",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "load_latest_checkpoint",
    "capture_training_state",
    "restore_training_state",
    "resume_training",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Layout version of the checkpoint contents (the keys below); bump when it changes.
CHECKPOINT_FORMAT = 1
_KIND = "agents.checkpoint"
_PREFIX = "checkpoint_"
_MAIN_RE = re.compile(r"^checkpoint_(\d+)\.pt$")
_SIDECAR_SUFFIX = ".replay_buffer.pkl"

#: integer counters copied back on resume when the agent has them (SB3's and ours)
_COUNTERS = (
    "_n_updates",
    "_n_outer",
    "_n_asked",
    "_successor_updates",
    "_last_outer_step",
    "_outer_total",
    "_n_skipped_nonfinite",
    "_n_nonfinite_consecutive",
    "_last_model_fit",
    "_last_model_rollout",
)


class CheckpointFormatError(ValueError):
    """A readable checkpoint written with another :data:`CHECKPOINT_FORMAT` (or not a checkpoint)."""


# ------------------------------------------------------------------ JSON-able RNG states
def _to_json(obj: Any) -> Any:
    """RNG states (nested dicts/tuples with ndarrays and big ints) to JSON-able values."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_json(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    return obj


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def _generator_from_state(state: Dict[str, Any]) -> np.random.Generator:
    """A fresh ``numpy`` Generator positioned at ``state`` (a ``bit_generator.state`` dict)."""
    name = state["bit_generator"]
    bit_generator = getattr(np.random, name, None)
    if bit_generator is None:
        raise CheckpointFormatError(f"unknown numpy bit generator {name!r} in the checkpoint")
    gen = np.random.Generator(bit_generator())
    gen.bit_generator.state = state
    return gen


def _set_generator(gen: np.random.Generator, state: Dict[str, Any]) -> bool:
    """Move ``gen`` to ``state`` in place; ``False`` when its bit generator is of another kind."""
    if gen.bit_generator.state.get("bit_generator") != state.get("bit_generator"):
        return False
    gen.bit_generator.state = state
    return True


def _generator_attributes(obj: Any) -> Dict[str, Any]:
    """``{name: generator}`` for the ``numpy``/``torch`` generators among ``obj``'s attributes."""
    return {k: v for k, v in vars(obj).items() if isinstance(v, (np.random.Generator, th.Generator))}


def _env_generators(env: Any) -> Optional[List[Dict[str, Any]]]:
    """The ``np_random`` state of each sub-env of a VecEnv, or ``None`` when not reachable."""
    if env is None:
        return None
    try:
        gens = env.get_attr("np_random")
    except Exception:  # noqa: BLE001 - an env without np_random: nothing to save
        return None
    if not all(isinstance(g, np.random.Generator) for g in gens):
        return None
    return [_to_json(g.bit_generator.state) for g in gens]


# ------------------------------------------------------------------ capture / restore
def _bytes_tensor(data: Union[bytes, memoryview]) -> th.Tensor:
    """``data`` as a uint8 tensor: a view of a writable buffer (e.g. ``BytesIO.getbuffer()``, no
    copy of an agent zip that is GBs on Atari), a copy of read-only bytes."""
    view = memoryview(data)
    if not view.nbytes:
        return th.zeros(0, dtype=th.uint8)
    return th.frombuffer(bytearray(view) if view.readonly else view, dtype=th.uint8)


def capture_training_state(model: Any) -> Tuple[Dict[str, Any], Dict[str, th.Tensor]]:
    """What SB3's ``save`` does not cover: ``(JSON-able info, tensors)`` (module docstring)."""
    info: Dict[str, Any] = {
        "num_timesteps": int(model.num_timesteps),
        "total_timesteps": int(getattr(model, "_total_timesteps", 0) or 0),
        "episode_num": int(getattr(model, "_episode_num", 0)),
        "counters": {k: int(getattr(model, k)) for k in _COUNTERS if isinstance(getattr(model, k, None), (int, np.integer))},
        "ep_info_buffer": [_to_json(dict(ep)) for ep in (getattr(model, "ep_info_buffer", None) or [])],
    }
    preferences = getattr(model, "preferences", None)
    if preferences is not None:
        info["n_labels"] = len(preferences)
    tensors: Dict[str, th.Tensor] = {"rng/torch": th.get_rng_state()}
    if th.cuda.is_available():
        for i, state in enumerate(th.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    rng: Dict[str, Any] = {
        "python": _to_json(random.getstate()),
        "numpy": _to_json(np.random.get_state()),
        "action_space": _to_json(model.action_space.np_random.bit_generator.state),
        "attributes": {},
        "feedback": {},
        "envs": _env_generators(model.get_env()),
    }
    for name, gen in _generator_attributes(model).items():
        if isinstance(gen, np.random.Generator):
            rng["attributes"][name] = _to_json(gen.bit_generator.state)
        else:
            tensors[f"rng/attr/{name}"] = gen.get_state()
    feedback = getattr(model, "teacher", None)  # the preference source holds the feedback RNG
    if feedback is not None:
        for name, gen in _generator_attributes(feedback).items():
            if isinstance(gen, np.random.Generator):
                rng["feedback"][name] = _to_json(gen.bit_generator.state)
    info["rng"] = rng
    storm = getattr(model, "_storm_state", None)
    if storm is not None:
        info["storm_size"] = len(storm["x"])
        for i, (x, h) in enumerate(zip(storm["x"], storm["h"])):
            tensors[f"storm/x/{i}"], tensors[f"storm/h/{i}"] = x, h
    demo = getattr(model, "_demo_data", None)
    if demo is not None:
        info["demo_keys"] = sorted(demo)
        for key, value in demo.items():
            tensors[f"demo/{key}"] = th.from_numpy(np.ascontiguousarray(value))
    return info, tensors


def restore_training_state(model: Any, checkpoint: "Checkpoint", envs: bool = True) -> None:
    """Put counters, RNG states, STORM momentum and demonstration arrays of ``checkpoint`` back
    into ``model`` (loaded from the same checkpoint).  Call it after ``_setup_learn`` (which
    resets counters and envs), as :class:`ResumeCallback` does.

    Raises:
        TypeError: ``model`` is not of the class that wrote the checkpoint.
    """
    info = checkpoint.info
    expected = info.get("algo")
    actual = f"{type(model).__module__}:{type(model).__qualname__}"
    if expected is not None and expected != actual:
        raise TypeError(f"checkpoint {checkpoint.path!r} was written by {expected}, cannot restore it into {actual}")
    model.num_timesteps = int(info["num_timesteps"])
    model._num_timesteps_at_start = model.num_timesteps
    model._episode_num = int(info["episode_num"])
    for name, value in info["counters"].items():
        setattr(model, name, int(value) if value is not None else None)
    if getattr(model, "ep_info_buffer", None) is not None:
        model.ep_info_buffer.clear()
        model.ep_info_buffer.extend(info["ep_info_buffer"])
    tensors, rng = checkpoint.tensors, info["rng"]
    python_state = rng["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    np.random.set_state(tuple(_from_json(rng["numpy"])))
    th.set_rng_state(tensors["rng/torch"])
    if th.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
        if len(states) == th.cuda.device_count():
            th.cuda.set_rng_state_all(states)
    _set_generator(model.action_space.np_random, _from_json(rng["action_space"]))
    current = _generator_attributes(model)
    for name, state in rng["attributes"].items():
        gen = current.get(name)
        if isinstance(gen, np.random.Generator) and _set_generator(gen, _from_json(state)):
            continue
        setattr(model, name, _generator_from_state(_from_json(state)))
    for key, state in tensors.items():
        if key.startswith("rng/attr/"):
            gen = getattr(model, key[len("rng/attr/"):], None)
            if isinstance(gen, th.Generator):
                gen.set_state(state)
    feedback = getattr(model, "teacher", None)  # the preference source holds the feedback RNG
    if feedback is not None:
        current = _generator_attributes(feedback)
        for name, state in rng["feedback"].items():
            gen = current.get(name)
            if not (isinstance(gen, np.random.Generator) and _set_generator(gen, _from_json(state))):
                setattr(feedback, name, _generator_from_state(_from_json(state)))
    env = model.get_env()
    if envs and rng.get("envs") is not None and env is not None and env.num_envs == len(rng["envs"]):
        for i, state in enumerate(rng["envs"]):
            with contextlib.suppress(Exception):  # an env whose np_random cannot be set keeps its own
                env.set_attr("np_random", _generator_from_state(_from_json(state)), indices=[i])
    if "storm_size" in info:
        n = int(info["storm_size"])
        model._storm_state = {
            "x": [tensors[f"storm/x/{i}"].to(model.device) for i in range(n)],
            "h": [tensors[f"storm/h/{i}"].to(model.device) for i in range(n)],
        }
    if "demo_keys" in info:
        model._demo_data = {k: tensors[f"demo/{k}"].numpy() for k in info["demo_keys"]}


# ------------------------------------------------------------------ files
@dataclass
class Checkpoint:
    """A verified checkpoint in memory (see :func:`load_checkpoint`)."""

    path: str
    info: Dict[str, Any]
    agent_zip: bytes
    vecnormalize: Optional[bytes] = None
    replay_buffer_path: Optional[str] = None
    tensors: Dict[str, th.Tensor] = field(default_factory=dict)

    @property
    def num_timesteps(self) -> int:
        return int(self.info["num_timesteps"])

    @property
    def total_timesteps(self) -> int:
        """The total of the ``learn`` call that was running (the run's budget)."""
        return int(self.info["total_timesteps"])

    @property
    def metadata(self) -> Dict[str, Any]:
        return dict(self.info.get("metadata") or {})

    def algo_class(self) -> type:
        module, _, name = self.info["algo"].partition(":")
        return getattr(import_module(module), name)

    def load_agent(self, env: Any = None, algo: Any = None, **kwargs: Any) -> Any:
        """The agent (``algo.load``, default: the class that wrote the checkpoint) with its
        replay buffer when saved.  Counters and RNG states are restored by
        :class:`ResumeCallback` once ``learn`` has set itself up."""
        algo = algo or self.algo_class()
        model = algo.load(io.BytesIO(self.agent_zip), env=env, **kwargs)
        if self.replay_buffer_path is not None:
            model.load_replay_buffer(self.replay_buffer_path)
        return model

    def extract(self, folder: PathLike, vecnormalize_dir: Optional[str] = None) -> str:
        """Lay the checkpoint out as rl_zoo3's ``--trained-agent`` expects; returns the zip path:
        ``folder/agent.zip``, ``folder/replay_buffer.pkl`` (a link to the sidecar) and
        ``folder/<vecnormalize_dir>/vecnormalize.pkl``."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        agent = os.path.join(folder, "agent.zip")
        with open(agent, "wb") as f:
            f.write(self.agent_zip)
        if self.replay_buffer_path is not None:
            link = os.path.join(folder, "replay_buffer.pkl")
            with contextlib.suppress(FileNotFoundError):
                os.remove(link)
            os.symlink(os.path.abspath(self.replay_buffer_path), link)
        if self.vecnormalize is not None and vecnormalize_dir is not None:
            os.makedirs(os.path.join(folder, vecnormalize_dir), exist_ok=True)
            with open(os.path.join(folder, vecnormalize_dir, "vecnormalize.pkl"), "wb") as f:
                f.write(self.vecnormalize)
        return agent


class _HashingWriter(io.RawIOBase):
    """Write-through file wrapper computing SHA-256 and size of what passes."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.sha256, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sha256.update(view)
        self.size += view.nbytes
        self._f.write(view)
        return view.nbytes


def _file_sha256(path: str) -> Tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def checkpoint_path(folder: PathLike, num_timesteps: int) -> str:
    return os.path.join(os.fspath(folder), f"{_PREFIX}{int(num_timesteps):012d}.pt")


def _sidecar(main_path: str) -> str:
    return main_path[: -len(".pt")] + _SIDECAR_SUFFIX


def save_checkpoint(
    model: Any, path: PathLike, save_replay_buffer: bool = False, metadata: Optional[Dict[str, Any]] = None
) -> str:
    """Write a checkpoint of ``model`` to ``path`` (atomically; see module docstring).

    Args:
        model: an SB3 agent (bilevel or not).
        path: destination file (conventionally ``checkpoint_<steps>.pt``); its folder must exist.
        save_replay_buffer: also write the replay buffer (sidecar file, written first).
        metadata: JSON-serialisable extra information stored verbatim.
    """
    path = os.fspath(path)
    if not path.endswith(".pt"):
        raise ValueError(f"path must end with '.pt', got {path!r}")
    info, tensors = capture_training_state(model)
    info.update(
        checkpoint_format=CHECKPOINT_FORMAT,
        algo=f"{type(model).__module__}:{type(model).__qualname__}",
        metadata=dict(metadata or {}),
        replay_buffer=None,
        vecnormalize=False,
    )
    if save_replay_buffer and getattr(model, "replay_buffer", None) is not None:
        sidecar = _sidecar(path)
        with atomic_open(sidecar, "wb") as f:
            writer = _HashingWriter(f)
            pickle.dump(model.replay_buffer, writer, protocol=pickle.HIGHEST_PROTOCOL)  # SB3's save_replay_buffer format
        info["replay_buffer"] = {"file": os.path.basename(sidecar), "sha256": writer.sha256.hexdigest(), "size": writer.size}
    zip_buffer = io.BytesIO()
    model.save(zip_buffer)
    tensors["agent_zip"] = _bytes_tensor(zip_buffer.getbuffer())
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        tensors["vecnormalize"] = _bytes_tensor(pickle.dumps(vec_normalize))
        info["vecnormalize"] = True
    save_state(path, _KIND, info, tensors)
    return path


def load_checkpoint(path: PathLike, replay_buffer: bool = True) -> Checkpoint:
    """Read and verify one checkpoint file.

    ``replay_buffer=False`` reads the agent only: the replay-buffer sidecar is neither required
    nor read (to evaluate or inspect an agent whose sidecar was not kept; such a checkpoint
    cannot resume training with its data).

    Raises:
        FileNotFoundError: no such file.
        CorruptFileError: truncated or damaged (main file or replay-buffer sidecar).
        CheckpointFormatError: a readable file of another checkpoint layout version, or a birl
            state file that is not a checkpoint.
    """
    path = os.fspath(path)
    kind, info, tensors = load_state(path)
    if kind != _KIND:
        raise CheckpointFormatError(f"{path!r} is a birl state file of kind {kind!r}, not a checkpoint")
    version = info.get("checkpoint_format")
    if version != CHECKPOINT_FORMAT:
        raise CheckpointFormatError(
            f"{path!r} has checkpoint format {version!r}; this version of agents.checkpoint reads format "
            f"{CHECKPOINT_FORMAT} only (resume with the library version that wrote it)"
        )
    if "agent_zip" not in tensors:
        raise CorruptFileError(f"{path!r}: the checkpoint holds no agent")
    if not isinstance(replay_buffer, bool):
        raise TypeError(f"replay_buffer must be a bool, got {type(replay_buffer).__name__}")
    replay = None
    if replay_buffer and info.get("replay_buffer"):
        replay = os.path.join(os.path.dirname(path), info["replay_buffer"]["file"])
        if not os.path.isfile(replay):
            raise CorruptFileError(f"{path!r}: its replay-buffer file {replay!r} is missing")
        digest, size = _file_sha256(replay)
        if size != info["replay_buffer"]["size"] or digest != info["replay_buffer"]["sha256"]:
            raise CorruptFileError(f"{replay!r}: replay-buffer checksum mismatch (truncated or corrupt)")
    return Checkpoint(
        path=path,
        info=info,
        agent_zip=tensors.pop("agent_zip").numpy().tobytes(),
        vecnormalize=tensors.pop("vecnormalize").numpy().tobytes() if "vecnormalize" in tensors else None,
        replay_buffer_path=replay,
        tensors=tensors,
    )


def list_checkpoints(folder: PathLike) -> List[str]:
    """Checkpoint files in ``folder``, oldest (fewest steps) first."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder: no such directory {folder!r}")
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := _MAIN_RE.match(name))]
    return [os.path.join(folder, name) for _, name in sorted(found)]


def load_latest_checkpoint(path: PathLike) -> Checkpoint:
    """The checkpoint at ``path`` (a file), or the newest good one in ``path`` (a folder).

    In a folder, a corrupt newest checkpoint is skipped with a warning and the previous one is
    used.  A checkpoint of another format version is not skipped (older ones would not be
    readable either): :class:`CheckpointFormatError` is raised.

    Raises:
        FileNotFoundError: ``path`` does not exist or the folder holds no checkpoint.
        CorruptFileError: every checkpoint in the folder is corrupt (or the file is).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return load_checkpoint(path)
    candidates = list_checkpoints(path)
    if not candidates:
        raise FileNotFoundError(f"path: no checkpoint_*.pt file in {path!r}")
    errors = []
    for candidate in reversed(candidates):
        try:
            checkpoint = load_checkpoint(candidate)
        except (CorruptFileError, FileNotFoundError) as err:
            errors.append(str(err))
            warnings.warn(f"skipping unreadable checkpoint {candidate!r}, trying the previous one: {err}", RuntimeWarning, stacklevel=2)
            continue
        return checkpoint
    raise CorruptFileError(f"no readable checkpoint in {path!r}: " + "; ".join(errors))


# ------------------------------------------------------------------ callbacks
class BilevelCheckpointCallback(BaseCallback):
    """Write a checkpoint every ``save_freq`` environment steps (``num_timesteps``, all envs
    together), at the start of a rollout, when everything up to that step is done (transitions
    stored, gradient and outer steps taken).

    Args:
        save_freq: environment steps between checkpoints (positive).
        save_path: folder of the checkpoints (created).
        keep: how many of the newest checkpoints to keep (at least 1); older ones are deleted
            only after the new one is complete.
        save_replay_buffer: also save the replay buffer (sidecar file).
        metadata: JSON-serialisable information stored in every checkpoint.
        verbose: 1 prints a line per checkpoint.
    """

    def __init__(
        self,
        save_freq: int,
        save_path: PathLike,
        keep: int = 2,
        save_replay_buffer: bool = False,
        metadata: Optional[Dict[str, Any]] = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        for name, value in (("save_freq", save_freq), ("keep", keep)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.save_freq, self.keep = int(save_freq), int(keep)
        self.save_path = os.fspath(save_path)
        self.save_replay_buffer = bool(save_replay_buffer)
        self.metadata = copy.deepcopy(dict(metadata or {}))
        self.last_path: Optional[str] = None
        self._next = 0

    def _init_callback(self) -> None:
        os.makedirs(self.save_path, exist_ok=True)
        for name in os.listdir(self.save_path):  # temporary files of a killed writer
            if name.startswith(f".{_PREFIX}") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.save_path, name))

    def _on_training_start(self) -> None:
        self._next = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_rollout_start(self) -> None:
        if self.model.num_timesteps >= self._next:
            self.save()
            self._next = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_step(self) -> bool:
        return True

    def save(self) -> str:
        """Write a checkpoint now and prune old ones; returns its path."""
        path = checkpoint_path(self.save_path, self.model.num_timesteps)
        save_checkpoint(self.model, path, self.save_replay_buffer, self.metadata)
        self.last_path = path
        if self.verbose >= 1:
            print(f"Saving checkpoint to {path}")
        self._prune(path)
        return path

    def _prune(self, newest: str) -> None:
        mains = [p for p in list_checkpoints(self.save_path) if p != newest]
        for old in mains[: max(0, len(mains) - (self.keep - 1))]:
            for victim in (_sidecar(old), old):  # the main file last: a checkpoint exists while it does
                with contextlib.suppress(FileNotFoundError):
                    os.remove(victim)
        kept = {os.path.basename(_sidecar(p)) for p in list_checkpoints(self.save_path)}
        for name in os.listdir(self.save_path):  # sidecars whose main file was never written
            if name.startswith(_PREFIX) and name.endswith(_SIDECAR_SUFFIX) and name not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self.save_path, name))


class ProgressCheckpointCallback(BilevelCheckpointCallback):
    """A :class:`BilevelCheckpointCallback` whose checkpoints also carry ``progress()`` (JSON:
    e.g. a benchmark's learning curve and timings so far) under ``metadata["progress"]``, so that
    a resumed run can continue them."""

    def __init__(self, save_freq: int, save_path: PathLike, progress: Callable[[], Dict[str, Any]], **kwargs: Any) -> None:
        super().__init__(save_freq, save_path, **kwargs)
        self.progress = progress

    def save(self) -> str:
        self.metadata["progress"] = self.progress()
        return super().save()


def stored_progress(checkpoint: Optional[Checkpoint]) -> Dict[str, Any]:
    """What a :class:`ProgressCheckpointCallback` stored in ``checkpoint`` (``{}`` without one),
    with ``"resumed"``: how many times the run has been resumed, this time included."""
    before = checkpoint.metadata.get("progress", {}) if checkpoint is not None else {}
    return {**before, "resumed": before.get("resumed", -1) + 1}


def find_checkpoint(folder: PathLike) -> Optional[Checkpoint]:
    """The newest readable checkpoint in ``folder``; ``None`` if there is none (no folder, no
    checkpoint, or only unreadable ones, with a warning: the caller starts over)."""
    if not os.path.isdir(folder):
        return None
    try:
        return load_latest_checkpoint(folder)
    except FileNotFoundError:
        return None
    except CorruptFileError as err:
        warnings.warn(f"{os.fspath(folder)}: no readable checkpoint, starting over: {err}", RuntimeWarning, stacklevel=2)
        return None


class ResumeCallback(BaseCallback):
    """Restore a checkpoint's counters and RNG states when ``learn`` starts (after SB3's
    ``_setup_learn`` has reset them), so that training continues from the checkpoint's step.

    Pass the checkpoint's :attr:`Checkpoint.total_timesteps` to ``learn`` (with the default
    ``reset_num_timesteps=True``): the step counter then runs from the checkpoint's step to the
    original total.  Put this callback before any callback that reads the counters.
    """

    def __init__(self, checkpoint: Checkpoint, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.checkpoint = checkpoint

    def _on_training_start(self) -> None:
        total = self.locals.get("total_timesteps")
        restore_training_state(self.model, self.checkpoint)
        if total is not None and int(total) != self.checkpoint.total_timesteps:
            warnings.warn(
                f"resuming {self.checkpoint.path!r}: learn() was given {total} steps in all, the checkpointed run had "
                f"{self.checkpoint.total_timesteps}; the query schedule keeps the original budget",
                RuntimeWarning,
                stacklevel=2,
            )
        self.model._total_timesteps = int(total) if total is not None else self.checkpoint.total_timesteps
        if self.verbose >= 1:
            print(f"Resumed from {self.checkpoint.path} at step {self.model.num_timesteps}")

    def _on_step(self) -> bool:
        return True


def resume_training(
    path: Union[PathLike, Checkpoint],
    env: Any,
    callback: Optional[Union[BaseCallback, Sequence[BaseCallback]]] = None,
    log_interval: int = 4,
    **load_kwargs: Any,
) -> Any:
    """Load the checkpoint at ``path`` (file or folder, see :func:`load_latest_checkpoint`) and
    train to the original total; returns the agent.  ``load_kwargs`` go to ``algo.load``."""
    checkpoint = path if isinstance(path, Checkpoint) else load_latest_checkpoint(path)
    model = checkpoint.load_agent(env=env, **load_kwargs)
    callbacks: List[BaseCallback] = [ResumeCallback(checkpoint)]
    if callback is not None:
        callbacks += [callback] if isinstance(callback, BaseCallback) else list(callback)
    model.learn(checkpoint.total_timesteps, callback=callbacks, log_interval=log_interval)
    return model
