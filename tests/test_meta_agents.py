"""agents.meta: one reward model shared by K bilevel agents (seed 004, deep-RL half)."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from agents.meta import MetaRewardLearner, make_pendulum_variant, pendulum_variant_id
from agents.sobirl import DRLHF, SoBiRL
from birl.feedback import SyntheticTeacher
from birl.reward_models import MlpReward
from envs.reward_wrapper import batch_rewards

from conftest import fast_agent_kwargs


def two_variants():
    return [make_pendulum_variant(0.8, 0.9), make_pendulum_variant(1.2, 1.1)]


def buffer_rewards(agent):
    n = agent.replay_buffer.pos
    return agent.replay_buffer.rewards[:n].copy()


def model_rewards(agent, model):
    buf, n = agent.replay_buffer, agent.replay_buffer.pos
    acts = agent._env_actions(buf.actions[:n].reshape(n, -1))
    return batch_rewards(model, buf.observations[:n].reshape(n, -1), acts, buf.next_observations[:n].reshape(n, -1),
                         agent.observation_space, agent.action_space)


def test_pendulum_variants_change_dynamics_not_reward():
    env_id = pendulum_variant_id(1.3, 0.7)
    assert env_id == pendulum_variant_id(1.3, 0.7) and env_id in gym.registry
    env = gym.make(env_id)
    assert (env.unwrapped.m, env.unwrapped.l) == (1.3, 0.7)
    assert env.spec.max_episode_steps == 200
    a, b = make_pendulum_variant(1.0, 1.0), make_pendulum_variant(2.0, 1.5)
    a.reset(seed=3), b.reset(seed=3)
    (oa, ra, *_), (ob, rb, *_) = a.step(np.array([1.0], np.float32)), b.step(np.array([1.0], np.float32))
    assert ra == pytest.approx(rb)  # the TRUE reward is computed from the state before the step: same
    assert not np.allclose(oa, ob)  # but the dynamics differ
    with pytest.raises(ValueError, match="m must be a positive"):
        pendulum_variant_id(0.0, 1.0)
    with pytest.raises(ValueError, match="l must be a positive"):
        pendulum_variant_id(1.0, float("nan"))


def test_agents_share_one_reward_model_and_optimiser():
    learner = MetaRewardLearner(two_variants(), algo=SoBiRL, seed=0, **fast_agent_kwargs())
    a0, a1 = learner.agents
    assert a0.reward_model is a1.reward_model is learner.reward_model
    assert a0.reward_optimizer is a1.reward_optimizer is learner.reward_optimizer
    params = list(learner.reward_model.parameters())
    assert all(p is q for p, q in zip(learner.reward_optimizer.param_groups[0]["params"], params))
    # every task's env pays the shared model's reward
    assert a0.env.reward_model is learner.reward_model and a1.env.reward_model is learner.reward_model
    # the agents keep their own inner learners, successor critics, buffers and teachers
    assert a0.actor is not a1.actor and a0.successor is not a1.successor
    assert a0.replay_buffer is not a1.replay_buffer and a0.teacher is not a1.teacher
    assert a0.seed == 0 and a1.seed == 1


def test_outer_step_of_one_agent_changes_what_the_other_relabels_with():
    learner = MetaRewardLearner(two_variants(), algo=SoBiRL, seed=0, **fast_agent_kwargs())
    learner.learn(300)
    a0, a1 = learner.agents
    assert len(a0.preferences) > 0 and len(a1.preferences) > 0
    learner.relabel(1)
    before = buffer_rewards(a1)
    np.testing.assert_allclose(before.reshape(-1), model_rewards(a1, learner.reward_model), rtol=1e-5, atol=1e-5)
    adam_steps = learner.reward_optimizer.state[next(learner.reward_model.parameters())]["step"].item()
    a0._outer_step()  # an outer step on task 0's preferences only
    assert learner.reward_optimizer.state[next(learner.reward_model.parameters())]["step"].item() > adam_steps
    np.testing.assert_array_equal(buffer_rewards(a1), before)  # task 1's buffer is stale ...
    learner.relabel(1)  # ... until relabelled (learn() does so before each of its chunks)
    after = buffer_rewards(a1)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after.reshape(-1), model_rewards(a1, learner.reward_model), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algo", [SoBiRL, DRLHF])
def test_learn_round_robin_on_two_variants_and_save_load(tmp_path, algo):
    learner = MetaRewardLearner(two_variants(), algo=algo, seed=0, chunk_steps=100, **fast_agent_kwargs())
    learner.learn(300)
    assert [a.num_timesteps for a in learner.agents] == [300, 300]
    assert learner.num_timesteps_per_task == 300
    # the budget is planned over the whole run, not per chunk: all 30 labels asked by the last outer step
    assert learner.n_labels == [30, 30]
    assert all(np.isfinite(learner.preference_accuracy()))
    for agent in learner.agents:  # Monitor inside the reward wrapper: TRUE Pendulum returns (<= 0)
        assert len(agent.ep_info_buffer) > 0 and all(ep["r"] <= 0 for ep in agent.ep_info_buffer)
    learner.save_reward_model(tmp_path / "reward.pt")
    loaded = MetaRewardLearner.load_reward_model(tmp_path / "reward.pt")
    assert type(loaded) is type(learner.reward_model)
    obs = th.as_tensor(np.stack([learner.agents[0].observation_space.sample() for _ in range(8)]))
    act = th.as_tensor(np.stack([learner.agents[0].action_space.sample() for _ in range(8)]))
    with th.no_grad():
        th.testing.assert_close(loaded(obs, act, obs), learner.reward_model(obs, act, obs))
    # a loaded reward seeds a new learner (continued meta-training)
    again = MetaRewardLearner(two_variants(), algo=algo, reward_model=loaded, seed=1, **fast_agent_kwargs())
    assert all(agent.reward_model is loaded for agent in again.agents)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="tasks must hold at least one"):
        MetaRewardLearner([], **fast_agent_kwargs())
    with pytest.raises(TypeError, match="tasks must be a list"):
        MetaRewardLearner(make_pendulum_variant(), **fast_agent_kwargs())
    with pytest.raises(TypeError, match=r"tasks\[1\] must be"):
        MetaRewardLearner([make_pendulum_variant(), 42], **fast_agent_kwargs())
    with pytest.raises(ValueError, match=r"tasks\[1\] has observation_space"):
        MetaRewardLearner([make_pendulum_variant(), gym.make("MountainCarContinuous-v0")], **fast_agent_kwargs())
    with pytest.raises(TypeError, match="algo must be"):
        MetaRewardLearner(two_variants(), algo=object, **fast_agent_kwargs())
    with pytest.raises(ValueError, match="feedback must hold one source per task"):
        MetaRewardLearner(two_variants(), feedback=[SyntheticTeacher(seed=0)], **fast_agent_kwargs())
    teacher = SyntheticTeacher(seed=0)
    with pytest.raises(ValueError, match="feedback: every task needs its own"):
        MetaRewardLearner(two_variants(), feedback=[teacher, teacher], **fast_agent_kwargs())
    with pytest.raises(ValueError, match="storm_mu"):
        MetaRewardLearner(two_variants(), storm_mu=0.5, **fast_agent_kwargs())
    with pytest.raises(TypeError, match="reward_model must be"):
        MetaRewardLearner(two_variants(), reward_model=th.nn.Linear(3, 1), **fast_agent_kwargs())
    with pytest.raises(ValueError, match="chunk_steps must be"):
        MetaRewardLearner(two_variants(), chunk_steps=0, **fast_agent_kwargs())
    learner = MetaRewardLearner(two_variants(), reward_model=MlpReward(3, 1, hidden=(16, 16)), **fast_agent_kwargs())
    with pytest.raises(ValueError, match="steps_per_task must be"):
        learner.learn(0)
