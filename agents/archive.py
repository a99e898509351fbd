"""Agent save files that keep the preference dataset as raw arrays.

SB3's ``save`` writes every attribute that is not a torch module into the archive's ``data``
member as JSON, pickling and base64-encoding whatever JSON cannot hold.  A
:class:`birl.feedback.PreferenceDataset` of Atari frames is gigabytes, so that meant gigabytes of
base64 text built in memory (several transient copies) on every save and checkpoint.  Bilevel
agents therefore leave ``preferences`` out of ``data`` and append the dataset to the same zip
archive as ``preferences/<array>.npy`` members plus ``preferences/meta.json``
(:meth:`PreferenceDataset.write_to_zip`), streamed in chunks.

* :func:`save_agent_archive` writes such an archive, atomically when given a path.
* :func:`read_stored_preferences` reads the dataset back from an archive (``None`` if it has none).
* :func:`read_saved_data` decodes chosen entries of the archive's ``data`` (e.g. the action space).
* :func:`load_preferences` reads it from any bilevel agent file, including those written before
  this layout (dataset pickled in ``data``), without building the agent.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import zipfile
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, Optional, Union

from birl.feedback import PreferenceDataset
from birl.serialization import atomic_open

#: Folder of the preference dataset's members inside an agent archive.
PREFERENCES_PREFIX = "preferences/"

PathOrFile = Union[str, "os.PathLike[str]", BinaryIO]


def _is_file(path: Any) -> bool:
    return hasattr(path, "write") or hasattr(path, "read")


def _zip_path(path: Union[str, "os.PathLike[str]"], reading: bool) -> pathlib.Path:
    """SB3's naming: ``.zip`` is added to a name without suffix (when reading: if the name
    itself does not exist)."""
    path = pathlib.Path(path)
    with_zip = pathlib.Path(f"{path}.zip")
    if reading:
        return with_zip if not path.exists() and with_zip.exists() else path
    return with_zip if path.suffix == "" else path


def _append(f: BinaryIO, dataset: Optional[PreferenceDataset]) -> None:
    if dataset is not None:
        with zipfile.ZipFile(f, mode="a") as archive:
            dataset.write_to_zip(archive, PREFERENCES_PREFIX)


def save_agent_archive(path: PathOrFile, write: Callable[[BinaryIO], None], dataset: Optional[PreferenceDataset]) -> None:
    """Write an agent archive with ``write`` (SB3's ``save`` into a file object), then append
    ``dataset`` to it.

    Args:
        path: a file name (``.zip`` is added without a suffix, as SB3 does; missing folders are
            created; the file is replaced atomically, so an interrupted save leaves the old file)
            or a writable binary file object (one that cannot be read back and sought is filled
            from a temporary file).
        write: writes an SB3 zip archive to a binary file object.
        dataset: stored under :data:`PREFERENCES_PREFIX` (nothing is appended for ``None``).
    """
    if _is_file(path):
        if path.readable() and path.seekable():  # e.g. io.BytesIO: append in place
            write(path)
            _append(path, dataset)
            return
        with tempfile.TemporaryFile() as tmp:
            write(tmp)
            _append(tmp, dataset)
            tmp.seek(0)
            shutil.copyfileobj(tmp, path)
        return
    target = _zip_path(path, reading=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(target, "w+b") as f:
        write(f)
        _append(f, dataset)


@contextlib.contextmanager
def _open_archive(path: PathOrFile) -> Iterator[zipfile.ZipFile]:
    if _is_file(path):
        with zipfile.ZipFile(path) as archive:
            yield archive
        return
    target = _zip_path(path, reading=True)
    if not target.is_file():
        raise FileNotFoundError(f"path: no such agent file {os.fspath(path)!r}")
    with zipfile.ZipFile(target) as archive:
        yield archive


def read_stored_preferences(path: PathOrFile) -> Optional[PreferenceDataset]:
    """The dataset stored under :data:`PREFERENCES_PREFIX` of an agent archive, or ``None`` if
    it holds none (an archive from before this layout, or from a non-bilevel agent).

    Raises:
        birl.serialization.CorruptFileError: the dataset's members are damaged.
    """
    with _open_archive(path) as archive:
        try:
            return PreferenceDataset.read_from_zip(archive, PREFERENCES_PREFIX)
        except KeyError:
            return None


def read_saved_data(path: PathOrFile, keys: Iterable[str], custom_objects: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The entries ``keys`` of an SB3 archive's ``data`` member, decoded as SB3's ``load`` would
    (``custom_objects`` replaces entries by name), without reading the network parameters or
    unpickling the other entries.  Keys the archive does not hold are left out.

    Raises:
        FileNotFoundError: ``path`` names no file.
        ValueError: the archive has no ``data`` member.
    """
    import json

    from stable_baselines3.common.save_util import json_to_data

    with _open_archive(path) as archive:
        try:
            raw = json.loads(archive.read("data").decode())
        except KeyError as error:
            raise ValueError(f"path: {path!r} is not an SB3 agent archive (no 'data' member)") from error
    wanted = {key: raw[key] for key in keys if key in raw}
    return json_to_data(json.dumps(wanted), custom_objects={k: v for k, v in (custom_objects or {}).items() if k in wanted})


def load_preferences(path: PathOrFile) -> PreferenceDataset:
    """The preference dataset of a saved bilevel agent (a file name, or a binary file object),
    without building the agent.

    Reads the ``preferences/`` members, or, in archives written before them, the dataset that
    SB3 pickled into ``data``.

    Raises:
        ValueError: the file holds no preference dataset.
    """
    stored = read_stored_preferences(path)
    if stored is not None:
        return stored
    stored = read_saved_data(path, ["preferences"]).get("preferences")
    if not isinstance(stored, PreferenceDataset):
        raise ValueError(f"path: {path!r} holds no preference dataset")
    return stored
