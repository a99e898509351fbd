"""Checkpoints: atomic, verified, pruned, resumable in process and through ``agents.train``
after a SIGKILL without losing or duplicating a label."""

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.save_util import load_from_zip_file

from agents.checkpoint import (
    BilevelCheckpointCallback,
    CheckpointFormatError,
    ResumeCallback,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
)
from agents.archive import load_preferences
from agents.sobirl import SoBiRL
from birl.feedback import SyntheticTeacher
from birl.serialization import CorruptFileError, load_state, save_state

REPO = Path(__file__).resolve().parent.parent


def small():
    return dict(learning_starts=100, outer_freq=100, n_queries=30, segment_length=10, reward_steps=3, batch_size=32,
                buffer_size=1000, policy_kwargs=dict(net_arch=[32, 32]), successor_net_arch=(32, 32), seed=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One short run checkpointed at steps 100, 200 and 300 (keep=2: 200 and 300 remain)."""
    folder = tmp_path_factory.mktemp("ckpt")
    model = SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(beta=1.0, seed=0), **small())
    callback = BilevelCheckpointCallback(100, folder, keep=2, save_replay_buffer=True, metadata={"note": "test"})
    model.learn(310, callback=callback)
    return folder


def copy_of(folder, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_keeps_the_newest_and_records_the_run(checkpoints):
    paths = list_checkpoints(checkpoints)
    assert [load_checkpoint(p).num_timesteps for p in paths] == [200, 300]
    assert sorted(os.listdir(checkpoints)) == sorted(
        [os.path.basename(p) for p in paths] + [os.path.basename(p)[:-3] + ".replay_buffer.pkl" for p in paths]
    )
    ckpt = load_checkpoint(paths[-1])
    assert ckpt.total_timesteps == 310 and ckpt.metadata == {"note": "test"}
    assert ckpt.info["counters"]["_n_outer"] == 2 and ckpt.info["n_labels"] > 0
    assert {"_outer_rng"} <= set(ckpt.info["rng"]["attributes"]) and "rng" in ckpt.info["rng"]["feedback"]
    assert ckpt.replay_buffer_path is not None


def test_truncated_or_corrupt_checkpoint_is_detected_and_skipped(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path)
    newest, previous = list_checkpoints(folder)[-1], list_checkpoints(folder)[0]
    data = Path(newest).read_bytes()
    Path(newest).write_bytes(data[: len(data) // 2])  # truncated, as by a crash without atomic writes
    with pytest.raises(CorruptFileError, match="truncated or corrupt"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
        assert load_latest_checkpoint(folder).num_timesteps == 200

    blob = bytearray(Path(previous).read_bytes())  # flip bytes inside the agent's tensor
    blob[len(blob) // 2 : len(blob) // 2 + 8] = bytes(8)
    Path(previous).write_bytes(bytes(blob))
    with pytest.raises(CorruptFileError):
        load_checkpoint(previous)
    with pytest.warns(RuntimeWarning), pytest.raises(CorruptFileError, match="no readable checkpoint"):
        load_latest_checkpoint(folder)


def test_damaged_replay_buffer_sidecar_is_detected(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path)
    newest = list_checkpoints(folder)[-1]
    sidecar = Path(newest[:-3] + ".replay_buffer.pkl")
    sidecar.write_bytes(sidecar.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match="replay-buffer checksum mismatch"):
        load_checkpoint(newest)
    with pytest.warns(RuntimeWarning):
        assert load_latest_checkpoint(folder).num_timesteps == 200
    # the agent alone still loads when asked for without its sidecar, damaged or deleted
    sidecar.unlink()
    with pytest.raises(CorruptFileError, match="replay-buffer file .* is missing"):
        load_checkpoint(newest)
    agent_only = load_checkpoint(newest, replay_buffer=False)
    assert agent_only.replay_buffer_path is None and agent_only.num_timesteps == 300
    assert agent_only.load_agent(device="cpu").num_timesteps == 300
    with pytest.raises(TypeError, match="replay_buffer"):
        load_checkpoint(newest, replay_buffer="no")


def test_format_version_mismatch_is_a_clear_error(checkpoints, tmp_path):
    folder = copy_of(checkpoints, tmp_path)
    newest = list_checkpoints(folder)[-1]
    kind, info, tensors = load_state(newest)
    save_state(newest, kind, {**info, "checkpoint_format": 999}, tensors)
    with pytest.raises(CheckpointFormatError, match="checkpoint format 999.*reads format 1"):
        load_checkpoint(newest)
    with pytest.raises(CheckpointFormatError):  # not silently skipped: older ones would not load either
        load_latest_checkpoint(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_latest_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize("kwargs", [dict(save_freq=0), dict(save_freq=10, keep=0), dict(save_freq=2.5)])
def test_callback_arguments_are_validated(tmp_path, kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        BilevelCheckpointCallback(save_path=tmp_path, **kwargs)


class _Probe(BaseCallback):
    def _on_training_start(self):
        m = self.model
        self.seen = dict(steps=m.num_timesteps, outer=m._outer_rng.bit_generator.state, teacher=m.feedback.rng.bit_generator.state,
                         numpy=np.random.get_state()[1].copy(), outer_total=m._outer_total)

    def _on_step(self):
        return True


def test_in_process_resume_restores_counters_and_rng_states(checkpoints):
    ckpt = load_checkpoint(list_checkpoints(checkpoints)[0])  # step 200 of 310
    model = ckpt.load_agent(env=gym.make("Pendulum-v1"), seed=123)  # a seed that reseeds everything
    assert model.replay_buffer.pos == 200
    probe = _Probe()
    model.learn(ckpt.total_timesteps, callback=[ResumeCallback(ckpt), probe])
    rng = ckpt.info["rng"]
    assert probe.seen["steps"] == 200 and probe.seen["outer_total"] == ckpt.info["counters"]["_outer_total"]
    assert probe.seen["outer"]["state"] == rng["attributes"]["_outer_rng"]["state"]
    assert probe.seen["teacher"]["state"] == rng["feedback"]["rng"]["state"]
    np.testing.assert_array_equal(probe.seen["numpy"], rng["numpy"][1]["__ndarray__"])
    assert model.num_timesteps == 310 and model._n_outer == 3


def _train(args):
    return subprocess.Popen([sys.executable, "-m", "agents.train", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})


def _saved_data(agent_zip):
    """The attributes SB3 saved in an agent zip (bytes or path), without building the agent."""
    data, _, _ = load_from_zip_file(io.BytesIO(agent_zip) if isinstance(agent_zip, bytes) else agent_zip, device="cpu")
    return data


def test_kill_and_resume_through_the_cli_loses_and_duplicates_no_label(tmp_path):
    total, n_queries = 600, 40
    args = ["--algo", "sobirl", "--env", "Pendulum-v1", "-n", str(total), "--seed", "2", "-f", str(tmp_path),
            "--eval-freq", "-1", "--verbose", "0", "--checkpoint-freq", "100", "--save-replay-buffer",
            "-params", "learning_starts:100", "outer_freq:100", f"n_queries:{n_queries}", "segment_length:5",
            "buffer_size:1000", "reward_steps:3", "batch_size:32", "policy_kwargs:dict(net_arch=[32, 32])",
            "successor_net_arch:[32]", "reward_model_kwargs:dict(hidden=[32])"]
    folder = tmp_path / "sobirl" / "Pendulum-v1_1" / "checkpoints"
    proc = _train(args)
    deadline = time.time() + 300  # a bound on waiting, not a timing check: a loaded machine just takes longer
    try:
        labelled = False
        while not labelled and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            for path in list_checkpoints(folder) if folder.is_dir() else []:
                try:
                    labelled = load_checkpoint(path).info["n_labels"] > 0
                except (FileNotFoundError, CorruptFileError):  # pruned while we read it
                    continue
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert labelled, "no checkpoint with labels in time"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed = load_latest_checkpoint(folder)
    assert 0 < killed.num_timesteps < total
    before = load_preferences(io.BytesIO(killed.agent_zip))
    assert len(before) > 0

    resumed = _train(["--resume", str(folder)])
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-3000:]
    run = tmp_path / "sobirl" / "Pendulum-v1_2"
    final = _saved_data(run / "Pendulum-v1.zip")
    assert final["num_timesteps"] == total  # the original budget, not checkpoint step + total
    later = [load_checkpoint(p).num_timesteps for p in list_checkpoints(run / "checkpoints")]
    assert later and min(later) > killed.num_timesteps  # the counter continued, it did not restart at 0
    prefs = load_preferences(run / "Pendulum-v1.zip")
    assert len(prefs) == n_queries == final["_n_asked"]  # what the schedule asks for, nothing more
    old, new = before.arrays(), prefs.arrays()
    for key in old:  # the labels of the checkpoint are a prefix of the final dataset
        np.testing.assert_array_equal(new[key][: len(before)], old[key])
    rows = {new["obs1"][i].tobytes() + new["acts1"][i].tobytes() + new["obs2"][i].tobytes() + new["acts2"][i].tobytes()
            for i in range(len(prefs))}
    assert len(rows) == len(prefs)  # no pair twice
