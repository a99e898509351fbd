"""Non-finite values in the outer level: the outer step is skipped (reward model, optimiser and
replay rewards untouched, nothing NaN stored), counted and warned about; training goes on; too
many in a row stop training with a FloatingPointError naming what was non-finite."""

import math

import numpy as np
import pytest
import torch as th

from agents.sobirl import DRLHF, SoBiRL
from birl.feedback import SyntheticTeacher
from birl.reward_models import MlpReward


class PoisonReward(MlpReward):
    """An MLP reward that returns NaN on demand: ``poison="grad"`` only where autograd is on (the
    outer loss; rollouts and relabelling stay finite), ``"nograd"`` only where it is off."""

    poison = None

    def forward(self, obs, act=None, next_obs=None):
        out = super().forward(obs, act, next_obs)
        if self.poison == "grad" and th.is_grad_enabled() or self.poison == "nograd" and not th.is_grad_enabled():
            return out * math.nan
        return out


class NaNTeacher(SyntheticTeacher):
    """A teacher whose labels are NaN while ``broken`` is set."""

    broken = False

    def label(self, seg1, seg2):
        labels, keep = super().label(seg1, seg2)
        return (np.full_like(labels, np.nan) if self.broken else labels), keep


def small(**extra):
    return dict(learning_starts=100, outer_freq=100, n_queries=40, segment_length=10, reward_steps=3, batch_size=32,
                buffer_size=1000, policy_kwargs=dict(net_arch=[32, 32]), successor_net_arch=(32, 32), seed=0) | extra


def reward_model(env_id="Pendulum-v1"):
    import gymnasium as gym

    env = gym.make(env_id)
    return PoisonReward.from_spaces(env.observation_space, env.action_space, hidden=(32,))


def state(model):
    params = [p.detach().clone() for p in model.reward_model.parameters()]
    opt = {k: {n: (v.clone() if th.is_tensor(v) else v) for n, v in s.items()} for k, s in model.reward_optimizer.state_dict()["state"].items()}
    return params, opt, model.replay_buffer.rewards.copy()


def assert_unchanged(model, before):
    params, opt, rewards = before
    assert all(th.equal(a, b) for a, b in zip(params, model.reward_model.parameters()))
    now = model.reward_optimizer.state_dict()["state"]
    assert now.keys() == opt.keys()
    for k in opt:
        for n, v in opt[k].items():
            assert th.equal(v, now[k][n]) if th.is_tensor(v) else v == now[k][n]
    np.testing.assert_array_equal(model.replay_buffer.rewards, rewards)
    assert np.isfinite(model.replay_buffer.rewards).all()


@pytest.fixture
def trained():
    """An agent after one outer step (10 labels), with 30 more labels due at the next one."""
    model = SoBiRL("MlpPolicy", "Pendulum-v1", feedback=NaNTeacher(seed=0), reward_model=reward_model(), **small())
    model.learn(150)
    assert len(model.preferences) == 10 and model._n_outer == 1
    return model


def test_nan_reward_model_output_skips_the_outer_step_and_training_continues(trained):
    model = trained
    before, n_labels = state(model), len(model.preferences)
    model.reward_model.poison = "grad"
    with pytest.warns(RuntimeWarning, match="non-finite outer loss"):
        model._outer_step()
    assert_unchanged(model, before)
    assert model._n_skipped_nonfinite == 1 and model._n_nonfinite_consecutive == 1
    assert model.logger.name_to_value["outer/skipped_nonfinite"] == 1
    assert len(model.preferences) == n_labels + 30  # the labels asked were valid: kept
    assert np.isfinite(model.preferences.labels).all()

    model.reward_model.poison = None  # the next outer step works again and resets the streak
    model._outer_step()
    assert model._n_nonfinite_consecutive == 0 and model._n_skipped_nonfinite == 1
    assert not all(th.equal(a, b) for a, b in zip(before[0], model.reward_model.parameters()))
    model.learn(100, reset_num_timesteps=False)  # and training goes on
    assert model.num_timesteps == 250


def test_nan_labels_are_not_stored_and_asked_again_later(trained):
    model = trained
    before, asked = state(model), model._n_asked
    model.feedback.broken = True
    with pytest.warns(RuntimeWarning, match="non-finite feedback labels"):
        model._outer_step()
    assert_unchanged(model, before)
    assert len(model.preferences) == 10 and model._n_asked == asked  # nothing NaN stored, nothing counted
    model.feedback.broken = False
    model._outer_step()  # the schedule catches up on the missed labels
    assert len(model.preferences) == 40 and model._n_asked == 40


def test_nan_true_rewards_skip_the_step_before_the_teacher_sees_them(trained):
    model = trained
    before = state(model)
    model.replay_buffer.true_rewards[:] = np.nan  # SyntheticTeacher would raise ValueError on them
    with pytest.warns(RuntimeWarning, match="non-finite segment true rewards"):
        model._outer_step()
    assert_unchanged(model, before)
    assert len(model.preferences) == 10


def test_nan_hypergradient_and_nan_relabelling_are_rolled_back(trained, monkeypatch):
    model = trained
    before = state(model)
    monkeypatch.setattr(model, "_score_directions", lambda batches: th.full((len(batches[0]), 32), math.nan))
    with pytest.warns(RuntimeWarning, match="non-finite hypergradient directions"):
        model._outer_step()
    assert_unchanged(model, before)
    monkeypatch.undo()

    model.reward_model.poison = "nograd"  # the update itself is finite, relabelling gives NaN
    with pytest.warns(RuntimeWarning, match="non-finite relabelled rewards"):
        model._outer_step()
    model.reward_model.poison = None
    assert_unchanged(model, before)  # parameters, Adam moments and the replay rewards are put back
    assert model._n_nonfinite_consecutive == 2


def test_too_many_consecutive_nonfinite_steps_stop_training():
    reward = reward_model()
    reward.poison = "grad"
    model = DRLHF("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), reward_model=reward, max_nonfinite_steps=2, **small())
    with pytest.warns(RuntimeWarning, match="outer step at env step 101 skipped"):
        with pytest.raises(FloatingPointError, match=r"2 consecutive outer steps .*outer loss.*max_nonfinite_steps=2"):
            model.learn(400)
    assert model.num_timesteps == 201 and model._n_skipped_nonfinite == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_max_nonfinite_steps_is_validated(bad):
    with pytest.raises(ValueError, match="max_nonfinite_steps must be a positive integer"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), max_nonfinite_steps=bad, **small())


def test_nan_relabelling_with_reward_scaling_keeps_the_rms_and_the_rewards():
    """``reward_scaling``: a relabelling that gives NaN is caught before ``rms`` is refitted, and the
    step's rollback leaves ``rms`` (what the env wrapper pays by) and the replay rewards as they were."""
    model = SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), reward_model=reward_model(),
                   reward_scaling=True, **small())
    model.learn(150)
    before, rms = state(model), float(model.inner_reward.rms)
    assert rms != 1.0
    model.reward_model.poison = "nograd"
    with pytest.warns(RuntimeWarning, match="non-finite relabelled rewards"):
        model._outer_step()
    model.reward_model.poison = None
    assert_unchanged(model, before)
    assert float(model.inner_reward.rms) == rms
    # a failure after the refit (here: another relabelled array going NaN) puts the old rms back
    poisoned = np.array([math.nan], dtype=np.float32)
    model._relabelled_rewards = lambda: [model.replay_buffer.rewards, poisoned]
    with pytest.warns(RuntimeWarning, match="non-finite relabelled rewards"):
        model._outer_step()
    assert_unchanged(model, before)
    assert float(model.inner_reward.rms) == rms
