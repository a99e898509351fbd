"""Same seed, same CPU: two in-process SoBiRL runs give bit-identical reward models; another
seed gives another one.  The teacher is unseeded and stochastic (small ``beta``), so its labels
are reproducible only because the agent seeds it."""

import torch as th

from agents.sobirl import SoBiRL
from birl.feedback import SyntheticTeacher


def run(seed):
    model = SoBiRL(
        "MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(beta=0.05), seed=seed, learning_starts=100, outer_freq=100,
        n_queries=30, segment_length=10, reward_steps=5, batch_size=32, buffer_size=1000,
        policy_kwargs=dict(net_arch=[32, 32]), successor_net_arch=(32, 32),
    )
    model.learn(250)  # two outer steps
    assert model._n_outer == 2
    return [p.detach().clone() for p in model.reward_model.parameters()], model.preferences.labels


def test_same_seed_same_reward_model_other_seed_another():
    (first, labels_a), (second, labels_b), (other, _) = run(3), run(3), run(4)
    assert all(th.equal(a, b) for a, b in zip(first, second))
    assert (labels_a == labels_b).all()
    assert not all(th.equal(a, b) for a, b in zip(first, other))
