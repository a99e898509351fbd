"""Joint demonstrations + preferences (AIHF, seed 002) in the SB3 agents."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from agents.sobirl import DRLHF, SoBiRL
from agents.zoo import make_feedback
from birl.feedback import Demonstrations, SyntheticTeacher, bradley_terry_nll, segment_returns

from conftest import fast_agent_kwargs


@pytest.fixture(scope="module")
def demos():
    env = gym.make("Pendulum-v1")
    env.action_space.seed(0)
    return Demonstrations.collect(lambda obs: env.action_space.sample(), env, n_episodes=2, seed=0)


@pytest.mark.parametrize("algo", [SoBiRL, DRLHF])
def test_joint_agent_learns_both_kinds_and_round_trips(tmp_path, demos, algo):
    model = algo("MlpPolicy", "Pendulum-v1", feedback=[demos, SyntheticTeacher(seed=0)], pref_weight=0.5, seed=0, **fast_agent_kwargs(reward_steps=3, demo_batch_size=32))
    assert model.uses_preferences and model.uses_demonstrations
    model.learn(300)
    assert len(model.preferences) > 0
    assert model._demo_data is not None and model._demo_data["obs"].shape[0] == demos.n_transitions
    model.save(tmp_path / "agent")
    loaded = algo.load(tmp_path / "agent", env=gym.make("Pendulum-v1"))
    assert loaded.uses_preferences and loaded.uses_demonstrations and loaded.pref_weight == 0.5
    obs = np.stack([model.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_joint_objective_is_demo_plus_weighted_preference_loss(demos):
    lam = 0.3
    model = SoBiRL("MlpPolicy", "Pendulum-v1", feedback=[demos, SyntheticTeacher(seed=0)], pref_weight=lam, seed=0, **fast_agent_kwargs(reward_steps=3, demo_batch_size=32))
    model.learn(250)
    state = copy.deepcopy(model._outer_rng.bit_generator.state)
    th.manual_seed(1)  # the demo term samples policy actions (E_pi); the same draws below
    surrogate, direct = model._reward_objective(None, None)()
    # the same draws, term by term
    model._outer_rng.bit_generator.state = state
    s1, s2, y = model.preferences.sample(model.reward_batch_size, rng=model._outer_rng)
    idx = model._outer_rng.integers(0, model._demo_data["obs"].shape[0], size=model.demo_batch_size)
    pref = bradley_terry_nll(segment_returns(model.reward_model, s1), segment_returns(model.reward_model, s2), y)
    th.manual_seed(1)
    demo = model._demo_surrogate(idx)
    th.testing.assert_close(direct, demo + lam * pref)
    th.testing.assert_close(surrogate, demo + lam * pref)  # no on-policy pairs given: no second term
    # and its gradient is the weighted sum of the parts' gradients
    params = list(model.reward_model.parameters())
    g_joint = th.autograd.grad(direct, params, allow_unused=True)
    g_demo = th.autograd.grad(demo, params, allow_unused=True, retain_graph=True)
    g_pref = th.autograd.grad(pref, params, allow_unused=True)
    for gj, gd, gp in zip(g_joint, g_demo, g_pref):
        expected = (0 if gd is None else gd) + lam * (0 if gp is None else gp)
        th.testing.assert_close(gj if gj is not None else th.zeros_like(expected), expected)


def test_bad_joint_feedback_is_rejected_at_construction(demos):
    with pytest.raises(ValueError, match="feedback"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=[SyntheticTeacher(), SyntheticTeacher()])
    with pytest.raises(ValueError, match="feedback"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=[])
    with pytest.raises(TypeError, match="feedback"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=[demos, "preferences"])
    with pytest.raises(ValueError, match="pref_weight"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=[demos, SyntheticTeacher()], pref_weight=-1.0)
    with pytest.raises(ValueError, match="branch"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=[demos, SyntheticTeacher()], estimator="branch")


def test_zoo_joint_feedback_builds_both_sources(tmp_path, demos):
    path = tmp_path / "demos.npz"
    demos.save(path)
    sources = make_feedback("joint", {"beta": float("inf")}, {"path": str(path)}, seed=3)
    assert isinstance(sources[0], Demonstrations) and isinstance(sources[1], SyntheticTeacher)
    assert len(sources[0]) == len(demos) and sources[1].seed == 3
