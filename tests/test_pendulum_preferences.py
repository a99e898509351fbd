"""End to end on Pendulum-v1: random rollouts -> synthetic preferences -> Bradley-Terry reward fit.

The fitted reward must order held-out segment pairs (from different rollouts) like the true
reward on at least 90% of them.
"""

import numpy as np
import pytest
import torch

import gymnasium as gym

from birl.feedback import (  # noqa: E402
    Demonstrations,
    PreferenceDataset,
    SyntheticTeacher,
    bradley_terry_nll,
    preference_accuracy,
    sample_segments_from_rollouts,
    segment_returns,
)
from birl.reward_models import MlpReward  # noqa: E402

HORIZON = 25
N_TRAIN, N_TEST = 500, 500
EPOCHS = 40


def random_rollouts(n_episodes: int, seed: int):
    env = gym.make("Pendulum-v1")
    env.action_space.seed(seed)
    demos = Demonstrations.collect(lambda obs: env.action_space.sample(), env, n_episodes, seed=seed)
    env.close()
    return demos.trajectories


def labelled_pairs(rollouts, n_pairs: int, teacher: SyntheticTeacher, rng: np.random.Generator):
    segs = sample_segments_from_rollouts(rollouts, horizon=HORIZON, n=2 * n_pairs, rng=rng)
    seg1, seg2 = segs[:n_pairs], segs[n_pairs:]
    labels, keep = teacher.label(seg1, seg2)
    assert keep.all()
    return seg1, seg2, labels


@pytest.fixture
def one_thread():
    """Tiny batches: one intra-op thread is faster and immune to a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bradley_terry_reward_recovers_pendulum_preferences(tmp_path, one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    teacher = SyntheticTeacher(beta=float("inf"), seed=0)
    train = PreferenceDataset()
    train.add(*labelled_pairs(random_rollouts(10, seed=0), N_TRAIN, teacher, rng))
    test1, test2, test_labels = labelled_pairs(random_rollouts(10, seed=1), N_TEST, teacher, rng)

    # round trip through disk, as a training run would
    train.save(tmp_path / "prefs.npz")
    train = PreferenceDataset.load(tmp_path / "prefs.npz")
    assert len(train) == N_TRAIN

    model = MlpReward(3, 1, hidden=(64, 64), normalize=True)
    arrays = train.arrays()
    model.update_normalizer(torch.as_tensor(arrays["obs1"].reshape(-1, 3)), torch.as_tensor(arrays["acts1"].reshape(-1, 1)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(EPOCHS):
        for seg1, seg2, labels in train.iter_batches(64, rng):
            loss = bradley_terry_nll(segment_returns(model, seg1), segment_returns(model, seg2), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

    with torch.no_grad():
        accuracy = preference_accuracy(segment_returns(model, test1), segment_returns(model, test2), test_labels)
    print(f"held-out preference accuracy: {accuracy:.3f}")
    assert accuracy >= 0.90

    model.save(tmp_path / "reward.pt")
    loaded = MlpReward.load(tmp_path / "reward.pt")
    with torch.no_grad():
        assert torch.equal(segment_returns(loaded, test1), segment_returns(model, test1))
