"""Agent save files keep the preference dataset as raw ``preferences/`` members (agents.archive)."""

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from stable_baselines3.common.save_util import load_from_zip_file

from agents import SoBiRL
from agents.archive import load_preferences, read_stored_preferences
from birl.feedback import PreferenceDataset
from birl.feedback.segments import SegmentBatch
from birl.serialization import CorruptFileError

ROOT = Path(__file__).resolve().parents[1]
#: A small SoBiRL agent (Pendulum-v1, 250 steps, 12 labels) saved by main at 86daa31, before the
#: ``preferences/`` members: SB3 pickled its dataset into ``data``.
OLD_FILE = ROOT / "tests" / "data" / "sobirl_pendulum_v0_1_0.zip"
#: SHA-256 of its dataset's arrays (sorted by name, name then bytes), computed by that version.
OLD_DIGEST = "23dc7d31b24683b739a23bba1db3ab1259f7ec06b4a232b41d9e504e59afbe3d"
OLD_LABELS = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]


def digest(ds: PreferenceDataset) -> str:
    arrays, h = ds.arrays(), hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(arrays[k].tobytes())
    return h.hexdigest()


def pairs(n, start=0, obs_dim=3):
    def side(offset):
        obs = np.arange(n * 2 * obs_dim, dtype=np.float32).reshape(n, 2, obs_dim) + 1000 * (start + offset)
        return SegmentBatch(obs=obs, acts=np.zeros((n, 2, 1), np.float32), true_rewards=np.full((n, 2), start + offset, float))
    return side(0), side(1), (np.arange(n) + start) % 2


class WriteOnly(io.RawIOBase):
    """A stream that can only be written (like a socket or a pipe)."""

    def __init__(self):
        self.chunks = []

    def writable(self):
        return True

    def write(self, b):
        self.chunks.append(bytes(b))
        return len(b)


def members(archive) -> dict[str, bytes]:
    """Each member's bytes: two saves a second apart differ only in the zip entries' times."""
    with zipfile.ZipFile(archive) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


@pytest.fixture(scope="module")
def old_agent():
    return SoBiRL.load(OLD_FILE, device="cpu")


def test_files_saved_before_the_preferences_members_still_load(old_agent):
    assert read_stored_preferences(OLD_FILE) is None  # the fixture really has the old layout
    assert len(old_agent.preferences) == 12 and old_agent.preferences.labels.tolist() == OLD_LABELS
    assert digest(old_agent.preferences) == OLD_DIGEST
    assert digest(load_preferences(OLD_FILE)) == OLD_DIGEST


def test_the_dataset_is_stored_outside_data_and_round_trips(old_agent, tmp_path):
    old_agent.save(tmp_path / "agent")  # SB3's naming: ".zip" is added
    path = tmp_path / "agent.zip"
    assert os.listdir(tmp_path) == ["agent.zip"]
    data, _, _ = load_from_zip_file(path, device="cpu")
    assert "preferences" not in data
    assert "preferences/obs1.npy" in zipfile.ZipFile(path).namelist()
    for source in (tmp_path / "agent", path):
        loaded = SoBiRL.load(source, device="cpu")
        assert digest(loaded.preferences) == OLD_DIGEST and loaded.preferences.n_added == 12
    assert digest(load_preferences(path)) == OLD_DIGEST

    buffer = io.BytesIO()  # what checkpoints use: appended in place
    old_agent.save(buffer)
    assert digest(SoBiRL.load(io.BytesIO(buffer.getvalue()), device="cpu").preferences) == OLD_DIGEST
    stream = WriteOnly()  # cannot be read back: filled from a temporary file
    old_agent.save(stream)
    assert members(io.BytesIO(b"".join(stream.chunks))) == members(buffer)  # zip timestamps may differ

    replaced = SoBiRL.load(path, device="cpu", custom_objects={"preferences": PreferenceDataset()})
    assert len(replaced.preferences) == 0


def test_an_evicting_dataset_keeps_its_order_and_capacity(tmp_path):
    ds = PreferenceDataset(capacity=5)
    ds.add(*pairs(4))
    ds.add(*pairs(4, start=4))  # wraps around: the oldest pair is no longer in row 0
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        ds.write_to_zip(archive)
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        back = PreferenceDataset.read_from_zip(archive)
    assert digest(back) == digest(ds) and back.n_evicted == ds.n_evicted == 3 and back.capacity == 5
    back.add(*pairs(1, start=8))
    ds.add(*pairs(1, start=8))
    assert digest(back) == digest(ds)


def test_an_interrupted_save_leaves_the_previous_file(old_agent, tmp_path, monkeypatch):
    path = tmp_path / "agent.zip"
    old_agent.save(path)
    before = path.read_bytes()

    def fail(self, archive, prefix="preferences/"):
        raise RuntimeError("disk full")

    monkeypatch.setattr(PreferenceDataset, "write_to_zip", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        old_agent.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["agent.zip"]


def test_a_damaged_member_is_reported_by_name(old_agent, tmp_path):
    path = tmp_path / "agent.zip"
    old_agent.save(path)
    info = zipfile.ZipFile(path).getinfo("preferences/labels.npy")
    raw = bytearray(path.read_bytes())
    name_len, extra_len = np.frombuffer(bytes(raw[info.header_offset + 26 : info.header_offset + 30]), "<u2")
    last = info.header_offset + 30 + int(name_len) + int(extra_len) + info.compress_size - 1
    raw[last] ^= 0xFF  # the last label's top byte
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="labels.npy"):
        SoBiRL.load(path, device="cpu")


def test_saving_an_agent_streams_its_dataset(tmp_path):
    """Atari datasets are GBs: saving must not build pickled/base64 copies of them in memory (the
    old layout raised peak RSS by several times the dataset)."""
    size_mb, n, h = 256, 2048, 25
    dim = size_mb * 2**20 // (2 * n * h * 4)  # float32 obs of both sides
    code = f"""
import resource, numpy as np
from agents import SoBiRL
from birl.feedback import PreferenceDataset
from birl.feedback.segments import SegmentBatch
model = SoBiRL.load({str(OLD_FILE)!r}, device="cpu")
ds = PreferenceDataset()
side = lambda: SegmentBatch(obs=np.ones(({n}, {h}, {dim}), np.float32), acts=np.zeros(({n}, {h}, 1), np.float32), true_rewards=np.zeros(({n}, {h})))
ds.add(side(), side(), np.ones({n}))
model.preferences = ds
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.save({str(tmp_path / 'big.zip')!r})
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    extra_mb = float(out.stdout.split()[-1])
    assert extra_mb < 0.5 * size_mb, f"saving a {size_mb} MB dataset raised peak RSS by {extra_mb:.0f} MB"
    back = load_preferences(tmp_path / "big.zip")
    assert len(back) == n and back.arrays()["obs1"].shape == (n, h, dim) and bool((back.arrays()["obs2"] == 1).all())


def test_read_saved_data_decodes_only_the_entries_asked_for(tmp_path):
    """The action space of an old archive, without unpickling its dataset or reading its weights."""
    from gymnasium.spaces import Box

    from agents import zoo
    from agents.archive import read_saved_data

    data = read_saved_data(OLD_FILE, ["action_space", "no_such_key"])
    assert list(data) == ["action_space"] and isinstance(data["action_space"], Box) and data["action_space"].shape == (1,)
    assert digest(read_saved_data(OLD_FILE, ["preferences"])["preferences"]) == OLD_DIGEST
    assert read_saved_data(OLD_FILE, ["gamma"], custom_objects={"gamma": 0.5, "tau": 1.0}) == {"gamma": 0.5}
    with open(OLD_FILE, "rb") as f:  # a file object is read in place, left open
        assert read_saved_data(f, ["action_space"])["action_space"] == data["action_space"] and not f.closed
    agent = zoo.ALGORITHMS["sobirl"].load(OLD_FILE)  # no env: the class comes from the saved action space
    assert isinstance(agent, SoBiRL) and len(agent.preferences) == len(OLD_LABELS)
    with pytest.raises(FileNotFoundError, match="path"):
        read_saved_data(tmp_path / "missing.zip", ["action_space"])
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not an agent")
    with pytest.raises(ValueError, match="not an SB3 agent archive"):
        read_saved_data(tmp_path / "other.zip", ["action_space"])
    with pytest.raises(ValueError, match="not an SB3 agent archive"):
        zoo.ALGORITHMS["sobirl"].load(tmp_path / "other.zip")
