"""Atomic, verifiable file formats for models and datasets (numpy + torch only).

Two containers are used across :mod:`birl`:

* **torch state files** (:func:`save_state` / :func:`load_state`): one ``torch.save`` archive
  holding a JSON config string, a flat ``{name: Tensor}`` state dict and a SHA-256 checksum of
  every tensor's bytes.  Loading always uses ``torch.load(..., weights_only=True)``, so no
  pickled code is ever executed, and the checksum catches silent corruption that the zip
  container does not notice.
* **npz archives** (:func:`save_npz` / :func:`load_npz`): ``numpy`` arrays plus a JSON metadata
  string stored as a 0-d unicode array, loaded with ``allow_pickle=False``.  The zip CRC of each
  member catches corruption.
* **arrays inside another zip archive** (:func:`write_zip_arrays` / :func:`read_zip_arrays`):
  ``<prefix><name>.npy`` members plus ``<prefix>meta.json``, streamed in chunks, for datasets
  stored next to an agent's own members (see :mod:`agents.archive`).

Every write goes to a temporary file in the destination directory, is flushed and fsynced, and
then moved over the destination with :func:`os.replace`, so a crash never leaves a half-written
file under the final name.  Every read failure becomes :class:`CorruptFileError` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from typing import Any, BinaryIO, Dict, Iterator, Mapping, Tuple, Union

import numpy as np
import torch

__all__ = [
    "CorruptFileError",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "tensor_checksum",
    "save_state",
    "load_state",
    "save_npz",
    "load_npz",
    "write_zip_arrays",
    "read_zip_arrays",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Version tag written into every container; bump when the layout changes.
FORMAT_VERSION = 1
_NPZ_META_KEY = "__meta__"


class CorruptFileError(ValueError):
    """A file exists but cannot be decoded (truncated, overwritten, wrong format or bad checksum)."""


def _new_file_mode(path: str) -> int:
    """The permission bits of an existing ``path``, else those ``open`` gives a new file (0o666
    less the umask)."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file next to ``path``; on a clean exit move it over ``path`` atomically.

    The temporary file is flushed and fsynced before :func:`os.replace`; on an exception it is
    removed and ``path`` is left untouched.

    Args:
        path: destination file.  Its directory must exist.
        mode: ``"wb"`` (bytes), ``"w+b"`` (bytes, readable back before the move, e.g. for a zip
            archive opened in append mode) or ``"w"`` (text, UTF-8).
    """
    if mode not in ("wb", "w+b", "w"):
        raise ValueError(f"mode must be 'wb', 'w+b' or 'w', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"path: directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, _new_file_mode(path))  # mkstemp makes 0600 files; keep what open() would give
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def _tensor_bytes(t: torch.Tensor) -> Union[bytes, np.ndarray]:
    """The raw bytes of ``t`` as a buffer (a view of a contiguous CPU tensor, no copy)."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy()


def tensor_checksum(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and raw bytes of every tensor (order independent)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def save_state(path: PathLike, kind: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Atomically write a JSON-able ``config`` and a tensor ``state_dict`` to one torch file.

    Args:
        path: destination file (conventionally ``*.pt``).
        kind: a tag checked on load (e.g. the model class name).
        config: JSON-serialisable constructor arguments.
        state_dict: ``{name: Tensor}``; tensors are moved to CPU.
    """
    try:
        config_json = json.dumps(config, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"config must be JSON-serialisable: {err}") from err
    tensors = {}
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
        t = t.detach().cpu()
        # torch.save writes a tensor's whole storage: copy only views into a larger one
        whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()
        tensors[name] = t if whole else t.clone()
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": str(kind),
        "config_json": config_json,
        "state_dict": tensors,
        "checksum": tensor_checksum(tensors),
    }
    # streamed to disk: no in-memory copy of the tensors (checkpoints of Atari agents hold GBs)
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def load_state(
    path: PathLike, expected_kind: str | None = None, map_location: Union[str, torch.device] = "cpu"
) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    """Read a file written by :func:`save_state`; returns ``(kind, config, state_dict)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: the file is truncated, not a state file, or fails its checksum.
        TypeError: ``expected_kind`` is given and the file holds another kind.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise CorruptFileError(f"{path!r} is not a readable state file (truncated or corrupt?): {err}") from err
    required = ("format_version", "kind", "config_json", "state_dict", "checksum")
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise CorruptFileError(f"{path!r} is a torch file but not a birl state file (missing {required})")
    if payload["format_version"] != FORMAT_VERSION:
        raise CorruptFileError(f"{path!r} has format_version {payload['format_version']}, expected {FORMAT_VERSION}")
    state_dict = payload["state_dict"]
    if tensor_checksum(state_dict) != payload["checksum"]:
        raise CorruptFileError(f"{path!r}: tensor checksum mismatch, the file is corrupt")
    try:
        config = json.loads(payload["config_json"])
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path!r}: config is not valid JSON: {err}") from err
    kind = payload["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise TypeError(f"{path!r} holds a {kind!r}, expected {expected_kind!r}")
    return kind, config, state_dict


def save_npz(path: PathLike, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Atomically write numeric ``arrays`` and JSON ``meta`` to an (uncompressed) ``.npz`` file.

    Object arrays are refused so that :func:`load_npz` never needs pickle.
    """
    if _NPZ_META_KEY in arrays:
        raise ValueError(f"arrays must not contain the reserved key {_NPZ_META_KEY!r}")
    out = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype == object:
            raise TypeError(f"arrays[{name!r}] has dtype object; only numeric/bool/str arrays can be saved")
        out[name] = a
    try:
        out[_NPZ_META_KEY] = np.array(json.dumps({"format_version": FORMAT_VERSION, **meta}, sort_keys=True))
    except TypeError as err:
        raise TypeError(f"meta must be JSON-serialisable: {err}") from err
    with atomic_open(path, "wb") as f:
        np.savez(f, **out)


def load_npz(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Read a file written by :func:`save_npz`; returns ``(arrays, meta)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptFileError: truncated or corrupt archive, CRC failure, or missing metadata.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    try:
        with open(path, "rb") as f:  # our own handle, so it is closed even when numpy raises
            data = np.load(f, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise CorruptFileError(f"{path!r} is a single .npy array, not an npz archive written by birl")
            with data:
                arrays = {k: data[k] for k in data.files}  # reading each member checks its CRC
    except CorruptFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise CorruptFileError(f"{path!r} is not a readable npz archive (truncated or corrupt?): {err}") from err
    if _NPZ_META_KEY not in arrays:
        raise CorruptFileError(f"{path!r} has no {_NPZ_META_KEY!r} entry; not written by birl")
    try:
        meta = json.loads(str(arrays.pop(_NPZ_META_KEY)))
    except json.JSONDecodeError as err:
        raise CorruptFileError(f"{path!r}: metadata is not valid JSON: {err}") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(f"{path!r} has format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return arrays, meta


def _member_source(archive: zipfile.ZipFile) -> str:
    return repr(archive.filename) if archive.filename else "the zip archive"


def write_zip_arrays(archive: zipfile.ZipFile, prefix: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Write ``arrays`` as ``<prefix><name>.npy`` members of an open, writable zip archive and
    ``meta`` (JSON) as ``<prefix>meta.json``.

    Each array is streamed into its member in chunks (no whole copy), uncompressed; every member
    carries the zip CRC, which :func:`read_zip_arrays` checks.  Object arrays are refused so that
    reading never needs pickle.
    """
    if not prefix.endswith("/"):
        raise ValueError(f"prefix must end with '/', got {prefix!r}")
    for name, a in arrays.items():
        if not name or "/" in name or name == "meta":
            raise ValueError(f"arrays: invalid array name {name!r}")
        if np.asarray(a).dtype == object:
            raise TypeError(f"arrays[{name!r}] has dtype object; only numeric/bool/str arrays can be saved")
    try:
        meta_json = json.dumps({"format_version": FORMAT_VERSION, **meta, "arrays": list(arrays)}, sort_keys=True)
    except TypeError as err:
        raise TypeError(f"meta must be JSON-serialisable: {err}") from err
    for name, a in arrays.items():
        with archive.open(f"{prefix}{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asarray(a), allow_pickle=False)
    archive.writestr(f"{prefix}meta.json", meta_json)


def read_zip_arrays(archive: zipfile.ZipFile, prefix: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Read what :func:`write_zip_arrays` wrote under ``prefix``; returns ``(arrays, meta)``.

    Raises:
        KeyError: the archive holds no ``<prefix>meta.json``.
        CorruptFileError: a member is missing, truncated or fails its CRC, or the metadata is bad.
    """
    source = _member_source(archive)
    raw = archive.read(f"{prefix}meta.json")  # KeyError: nothing stored under prefix
    try:
        meta = json.loads(raw)
        names = meta.pop("arrays")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as err:
        raise CorruptFileError(f"{source}: {prefix}meta.json is not valid metadata: {err!r}") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorruptFileError(f"{source}: {prefix}meta.json has format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    arrays = {}
    for name in names:
        member = f"{prefix}{name}.npy"
        try:
            with archive.open(member) as f:
                arrays[name] = np.lib.format.read_array(f, allow_pickle=False)
                if f.read(1):  # reaching the end also checks the member's CRC
                    raise ValueError("bytes after the array")
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
            raise CorruptFileError(f"{source}: member {member!r} is missing or corrupt: {err}") from err
    return arrays, meta
