"""The entropy-trace diagnostic (benchmark/diagnostics/entropy_trace.py): callback rows and summaries."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmark" / "diagnostics"))
import checkpoint_reward  # noqa: E402  (a script folder, not a package)
import entropy_trace  # noqa: E402
import reward_fit_probe  # noqa: E402

from agents.discrete_sac import DiscreteSAC  # noqa: E402


def test_trace_rows_match_the_agent(tmp_path):
    path = tmp_path / "trace.csv"
    model = DiscreteSAC("MlpPolicy", "CartPole-v1", learning_starts=100, batch_size=32, seed=0,
                        policy_kwargs=dict(net_arch=[16]), buffer_size=1000)
    model.learn(400, callback=entropy_trace.EntropyTrace(str(path), every=100, n_states=64))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [200, 300, 400]  # none before the first update
    last = rows[-1]
    assert int(last["n_updates"]) == model._n_updates - 1  # read before the last step's update
    assert float(last["ent_coef"]) == pytest.approx(model.alpha, rel=1e-3)  # one alpha step later
    assert 0.0 < float(last["entropy"]) <= math.log(2) + 1e-6
    assert math.isnan(float(last["reward_spread"])) and math.isnan(float(last["tau"]))  # plain SAC: no reward model


def test_summary_ratio_is_one_for_a_soft_greedy_actor(tmp_path):
    path = tmp_path / "trace.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, entropy_trace.FIELDS, restval="nan")
        writer.writeheader()
        # steps 100-400 track softmax(Q / alpha); step 600 has overshot 10x and collapsed
        for step, alpha, spread, logits, entropy in [(100, 0.1, 0.5, 5.0, 1.2), (400, 0.2, 0.4, 2.0, 1.5), (600, 0.1, 0.3, 30.0, 1e-9)]:
            writer.writerow({"step": step, "ent_coef": alpha, "q_spread": spread, "logit_range": logits, "entropy": entropy})
    early, late = entropy_trace.summarise(str(path), [0, 500, 1000])
    assert early["rows"] == 2 and early["median_ratio"] == pytest.approx(1.0) and early["share_low"] == 0.0
    assert late["rows"] == 1 and late["max_ratio"] == pytest.approx(10.0) and late["share_low"] == 1.0
    assert late["alpha_min"] == late["alpha_max"] == pytest.approx(0.1)
    assert entropy_trace.summarise(str(path), [700, 800]) == []
    assert np.isfinite(early["min_entropy"])


def test_reward_fit_probe_reports_each_outer_step_and_leaves_the_agent_alone(capsys, monkeypatch):
    import gymnasium as gym
    import torch as th

    from agents.sobirl import SoBiRL
    from birl.feedback import SyntheticTeacher

    env = gym.make("Pendulum-v1")
    agent = reward_fit_probe.probe_class(SoBiRL, [20])(
        "MlpPolicy", env, feedback=SyntheticTeacher(beta=float("inf"), seed=0), estimator="none", n_queries=40,
        segment_length=10, outer_freq=200, reward_steps=5, learning_starts=200, batch_size=32,
        policy_kwargs=dict(net_arch=[16]), seed=0)
    before = {}

    real_more_steps = reward_fit_probe._more_steps

    def spy(model, n):
        before["params"] = [p.detach().clone() for p in model.reward_model.parameters()]
        copy = real_more_steps(model, n)
        before["after"] = [p.detach().clone() for p in model.reward_model.parameters()]
        before["copy"] = [p.detach().clone() for p in copy.parameters()]
        return copy

    monkeypatch.setattr(reward_fit_probe, "_more_steps", spy)
    agent.learn(600)
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["step"] for r in rows] == [201, 401]
    for row in rows:
        for fit in (row["reward_steps=5"], row["+20"]):
            assert 0.0 <= fit["train_acc"] <= 1.0 and 0.0 <= fit["heldout_acc"] <= 1.0 and -1.0 <= fit["corr"] <= 1.0
    # the extra steps train a copy: the agent's own reward model is untouched, the copy moved
    assert all(th.equal(a, b) for a, b in zip(before["params"], before["after"]))
    assert not all(th.equal(a, b) for a, b in zip(before["params"], before["copy"]))


class _LinearRewardAgent:
    """Stands in for an agent: reward ``obs[:, 0] - act[:, 0]`` on the CPU."""

    device = "cpu"

    @staticmethod
    def reward_model(obs, acts, next_obs):
        return obs[:, 0] - acts[:, 0]


def test_checkpoint_reward_agreement_numbers():
    rng = np.random.default_rng(0)
    obs, acts = rng.normal(size=(50, 3)).astype(np.float32), rng.normal(size=(50, 1)).astype(np.float32)
    true = rng.normal(size=50).astype(np.float32)
    terminal = np.zeros(50, dtype=np.float32)
    terminal[[9, 29]] = 1
    out = checkpoint_reward.reward_agreement(_LinearRewardAgent(), dict(obs=obs, acts=acts, next_obs=obs, true=true, terminal=terminal))
    learned = obs[:, 0].astype(np.float64) - acts[:, 0]
    assert out["corr"] == pytest.approx(np.corrcoef(learned, true)[0, 1], abs=1e-3)
    assert out["learned_mean_over_std"] == pytest.approx(learned.mean() / learned.std(), abs=1e-3)
    assert out["learned_terminal_mean"] == pytest.approx(learned[[9, 29]].mean(), abs=1e-3)
    assert out["true_terminal_mean"] == pytest.approx(true[[9, 29]].mean(), abs=1e-3)
    assert out["n_terminal"] == 2
    # learned = 2 TRUE + 3: the fit recovers it, and the learned reward pays 1.5 TRUE units per step extra
    true = ((learned - 3.0) / 2.0).astype(np.float32)
    out = checkpoint_reward.reward_agreement(_LinearRewardAgent(), dict(obs=obs, acts=acts, next_obs=obs, true=true, terminal=terminal))
    assert (out["fit_slope"], out["fit_intercept"], out["extra_alive"]) == pytest.approx((2.0, 3.0, 1.5), abs=1e-3)


def test_checkpoint_reward_episode_scores_numbers():
    from birl.feedback.segments import Trajectory

    rng = np.random.default_rng(1)
    episodes = [Trajectory(obs=rng.normal(size=(n + 1, 3)), acts=rng.normal(size=(n, 1)), rewards=rng.normal(size=n), terminated=True)
                for n in (4, 7)]
    out = checkpoint_reward.episode_scores(_LinearRewardAgent(), episodes, gamma=0.5)
    learned = [t.obs[:-1, 0] - t.acts[:, 0] for t in episodes]
    assert out["learned_return"] == pytest.approx(np.mean([r.sum() for r in learned]), abs=1e-3)
    assert out["learned_discounted_return"] == pytest.approx(np.mean([sum(x * 0.5 ** i for i, x in enumerate(r)) for r in learned]), abs=1e-3)
    assert out["true_return"] == pytest.approx(np.mean([t.rewards.sum() for t in episodes]), abs=1e-3)
    assert out["true_discounted_return"] == pytest.approx(np.mean([sum(x * 0.5 ** i for i, x in enumerate(t.rewards)) for t in episodes]), abs=1e-3)
    assert out["length"] == 5.5
    with pytest.raises(ValueError, match="gamma"):
        checkpoint_reward.episode_scores(_LinearRewardAgent(), episodes, gamma=0.0)
    with pytest.raises(ValueError, match="episodes"):
        checkpoint_reward.episode_scores(_LinearRewardAgent(), [], gamma=0.9)


def test_checkpoint_reward_reads_a_checkpoint(tmp_path, capsys):
    from agents.checkpoint import save_checkpoint
    from agents.sobirl import SoBiRL
    from birl.feedback import SyntheticTeacher
    from stable_baselines3 import SAC

    model = SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), learning_starts=100, outer_freq=100,
                   n_queries=20, segment_length=10, reward_steps=3, batch_size=32, buffer_size=1000,
                   policy_kwargs=dict(net_arch=[16]), successor_net_arch=(16,), seed=0)
    model.learn(200)
    path = save_checkpoint(model, str(tmp_path / "checkpoint_200.pt"))
    checkpoint_reward.main(["--env", "Pendulum-v1", "--steps", "300", path])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (row["num_timesteps"], row["steps"], row["n_terminal"]) == (200, 300, 0)  # Pendulum never terminates
    assert row["true_mean"] < 0 and row["true_terminal_mean"] is None and -1 <= row["corr"] <= 1
    # --replay-buffer: the transitions the run stored, with their TRUE rewards
    buffer_file = tmp_path / "buffer.pkl"
    model.save_replay_buffer(str(buffer_file))
    checkpoint_reward.main(["--env", "Pendulum-v1", "--replay-buffer", str(buffer_file), "--rows", "50:150", path])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["rows"] == "50:150" and row["n_terminal"] == 0
    assert row["true_mean"] == pytest.approx(model.replay_buffer.true_rewards[50:150, 0].mean(), abs=1e-3)
    for rows in ("0:0", "150:50", "0:201", "50"):  # 200 rows stored
        with pytest.raises(ValueError, match="rows"):
            checkpoint_reward.main(["--env", "Pendulum-v1", "--replay-buffer", str(buffer_file), "--rows", rows, path])
    # --cross: every (policy, reward) pair of the checkpoints; Pendulum's episodes last 200 steps
    model.learn(100, reset_num_timesteps=False)
    later = save_checkpoint(model, str(tmp_path / "checkpoint_300.pt"))
    checkpoint_reward.main(["--env", "Pendulum-v1", "--cross", "1", path, later])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["policy"], r["reward"]) for r in rows] == [("200", "200"), ("200", "300"), ("300", "200"), ("300", "300")]
    assert all(r["length"] == 200 and r["true_return"] < 0 for r in rows)
    assert rows[0]["true_return"] == rows[1]["true_return"] and rows[0]["learned_return"] != rows[1]["learned_return"]
    with pytest.raises(ValueError, match="cross"):
        checkpoint_reward.main(["--env", "Pendulum-v1", "--cross", "-1", path])
    plain = SAC("MlpPolicy", "Pendulum-v1", learning_starts=10, batch_size=16, buffer_size=100, policy_kwargs=dict(net_arch=[8]))
    with pytest.raises(ValueError, match="checkpoints"):
        checkpoint_reward.main(["--env", "Pendulum-v1", save_checkpoint(plain, str(tmp_path / "sac.pt"))])
    with pytest.raises(ValueError, match="steps"):
        checkpoint_reward.rollout(model, "Pendulum-v1", 1, 0)
