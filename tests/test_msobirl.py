"""M-SoBiRL agents: tabular w-iteration vs exact, learned tabular model convergence, the
model-branched estimator, Pendulum smoke run with save/load and logging."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.logger import configure

from agents.msobirl import DiscreteMSoBiRL, MSoBiRL, rollout_length
from birl.feedback import Demonstrations, SyntheticTeacher
from birl.hypergrad import hypergradient
from birl.losses import DemonstrationNLL
from birl.tabular import TabularMDP, garnet
from envs.tabular_env import TabularEnv

from conftest import fast_agent_kwargs


def fast_model():
    return dict(dynamics_kwargs=dict(hidden=(32, 32), n_members=3, n_elites=2), model_fit_kwargs=dict(max_epochs=5),
                rollout_batch_size=50, model_train_freq=100, model_rollout_freq=100)


@pytest.fixture(scope="module")
def tabular():
    mdp = garnet(8, 3, 4, gamma=0.9, tau=1.0, seed=0, branching=3)
    x_true = np.random.default_rng(0).standard_normal(4)
    expert = mdp.soft_solve(x_true).pi
    demos = Demonstrations.collect(lambda s: int(np.argmax(expert[s])), TabularEnv(mdp, reward_params=x_true, max_episode_steps=30), 3, seed=0)
    return mdp, x_true, demos


def exact_table_gradient(mdp, agent, weights):
    """``exact`` hypergradient of the ML-IRL loss with the reward TABLE as outer variable, at the
    agent's current policy, reward and temperature, on the TRUE P."""
    S, A = mdp.n_states, mdp.n_actions
    with th.no_grad():
        r = agent.reward_table().double().numpy().reshape(-1)
    table_mdp = TabularMDP(mdp.P, np.eye(S * A).reshape(S, A, S * A), gamma=agent.gamma, tau=agent._tau())
    return hypergradient(table_mdp, r, DemonstrationNLL(weights), "exact", pi=agent.policy_table()).grad.reshape(S, A)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("feedback,reward_scaling", [("demonstrations", False), ("preferences", False), ("preferences", True)])
def test_tabular_agent_with_true_P_matches_exact(tabular, feedback, reward_scaling):
    """With ``reward_scaling`` the learner solves the soft MDP of the raw reward at ``alpha * rms``,
    the temperature of both the estimate and the exact answer."""
    mdp, x_true, demos = tabular
    fb = demos if feedback == "demonstrations" else SyntheticTeacher(seed=0)
    env = TabularEnv(mdp, reward_params=x_true, max_episode_steps=50)
    agent = DiscreteMSoBiRL("MlpPolicy", env, feedback=fb, seed=0, gamma=mdp.gamma, transition_model=mdp.P,
                            msobirl_iters=3000, reward_scaling=reward_scaling, **fast_agent_kwargs())
    before = [p.detach().clone() for p in agent.reward_model.parameters()]
    agent.learn(300)
    assert any(not th.equal(a, b) for a, b in zip(before, agent.reward_model.parameters()))
    weights = agent.demonstration_weights() if feedback == "demonstrations" else np.random.default_rng(1).random((8, 3))
    estimate = agent.model_hypergradient(-weights)  # the agent's estimator: w-iteration on its model
    assert rel(estimate, exact_table_gradient(mdp, agent, weights)) < 1e-5  # w-iteration tolerance
    if reward_scaling:
        assert float(agent.inner_reward.rms) != 1.0 and agent._tau() == pytest.approx(agent._ent_coef_float() * float(agent.inner_reward.rms))


def test_learned_tabular_model_converges_to_exact(tabular):
    mdp, x_true, demos = tabular
    env = TabularEnv(mdp, reward_params=x_true, max_episode_steps=50)
    agent = DiscreteMSoBiRL("MlpPolicy", env, feedback=demos, seed=0, gamma=mdp.gamma, msobirl_iters=3000, **fast_agent_kwargs())
    weights = agent.demonstration_weights()
    exact = exact_table_gradient(mdp, agent, weights)
    rng = np.random.default_rng(0)
    errors = []
    for n in (300, 3_000, 30_000, 300_000):
        s, a = rng.integers(0, 8, n), rng.integers(0, 3, n)
        agent.counts = agent.counts.__class__(8, 3).update(s, a, mdp.step_states(s, a, rng))
        errors.append(rel(agent.model_hypergradient(-weights), exact))
    assert errors[-1] < 0.02
    assert errors[-1] < errors[1] / 3 and errors[1] < errors[0]  # about 1/sqrt(n)


def test_learned_counts_come_from_the_replay_buffer(tabular):
    mdp, x_true, demos = tabular
    env = TabularEnv(mdp, reward_params=x_true, max_episode_steps=50)
    agent = DiscreteMSoBiRL("MlpPolicy", env, feedback=demos, seed=0, gamma=mdp.gamma, **fast_agent_kwargs())
    agent.learn(250)
    counts = agent.update_counts()
    assert counts.n_transitions == agent.replay_buffer.pos
    seen = counts.counts.sum(-1) > 0
    support = mdp.P > 0
    assert np.all(support[seen] | (counts.counts[seen] == 0))  # never a transition outside P's support


def test_model_estimator_reduces_to_one_step_advantage_at_horizon_one():
    """With T = 1 the branched Q - V is r(s, a) - E_pi r(s, .): the myopic surrogate, in expectation.
    (MountainCarContinuous: actions already in [-1, 1], so buffer and env units agree.)"""
    env = gym.make("MountainCarContinuous-v0")
    agent = MSoBiRL("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), seed=0, branch_horizon=1, branch_rollouts=400,
                    branch_steps=None, n_action_samples=400, **fast_agent_kwargs(), **fast_model())
    agent.learn(150)
    s1, s2, _ = agent.preferences[np.arange(6)]
    grads = []
    for estimator in ("model", "myopic"):
        agent.estimator, agent._branch_cache = estimator, None
        agent.reward_model.zero_grad()
        agent._myopic_directions([s1, s2]).sum().backward()
        grads.append(th.cat([p.grad.reshape(-1) for p in agent.reward_model.parameters()]).numpy())
    cos = grads[0] @ grads[1] / (np.linalg.norm(grads[0]) * np.linalg.norm(grads[1]))
    assert cos > 0.95


def test_pendulum_smoke_save_load_logging(tmp_path):
    agent = MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs(), **fast_model())
    agent.set_logger(configure(str(tmp_path), ["csv"]))
    agent.learn(400, log_interval=1)
    assert agent.model_buffer.size() > 0 and len(agent.preferences) > 0
    with open(tmp_path / "progress.csv") as f:
        logged = f.readline().strip().split(",")
    for key in ("model/val_mse_elites", "model/rollout_length", "outer/loss", "outer/pref_accuracy", "rollout/true_ep_rew_mean"):
        assert key in logged, key
    obs = np.stack([agent.observation_space.sample() for _ in range(8)])
    act, _ = agent.predict(obs, deterministic=True)
    agent.save(tmp_path / "agent")
    loaded = MSoBiRL.load(tmp_path / "agent", env=gym.make("Pendulum-v1"))
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], act)
    for a, b in zip(agent.dynamics.state_dict().values(), loaded.dynamics.state_dict().values()):
        assert th.equal(a, b)
    assert loaded.estimator == "model" and loaded.dynamics.config == agent.dynamics.config
    # the model buffer is not saved: with the real data back, the next update refills it at once,
    # even though the last generation (before the save) is more recent than model_rollout_freq
    agent.save_replay_buffer(tmp_path / "buffer")
    loaded.load_replay_buffer(tmp_path / "buffer")
    loaded._last_model_rollout = loaded.num_timesteps
    assert loaded.model_buffer.size() == 0
    loaded.learn(1, reset_num_timesteps=False)
    assert loaded.model_buffer.size() > 0
    loaded.learn(100, reset_num_timesteps=False)


def test_reward_scaling_pays_model_rollouts_the_scaled_reward(tmp_path):
    """``reward_scaling`` in M-SoBiRL: model rollouts and the relabelled model buffer pay ``r / rms``
    (the same ``rms`` as the real replay), while the ``model`` estimator differentiates the raw
    reward at ``tau = alpha * rms``; ``rms`` survives save / load."""
    agent = MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), reward_scaling=True, seed=0,
                    **fast_agent_kwargs(), **fast_model())
    agent.learn(400)
    rms = float(agent.inner_reward.rms)
    assert agent._n_outer >= 2 and rms != 1.0 and agent._tau() == pytest.approx(agent._ent_coef_float() * rms)

    def raw(buf, n):
        with th.no_grad():
            return agent._reward_fn(*(th.as_tensor(a[:n, 0]) for a in (buf.observations, buf.actions, buf.next_observations))).numpy()

    agent.generate_model_rollouts()  # a fresh generation, after the last outer step's rms
    model_buf = agent.model_buffer
    new = (model_buf.pos - np.arange(1, agent.rollout_batch_size + 1)) % model_buf.buffer_size
    np.testing.assert_allclose(model_buf.rewards[new, 0], raw(model_buf, model_buf.size())[new] / rms, rtol=1e-5, atol=1e-6)
    agent._relabel()
    rms = float(agent.inner_reward.rms)
    real, n = agent.replay_buffer, agent.replay_buffer.size()
    assert np.sqrt(np.mean(real.rewards[:n] ** 2)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(model_buf.rewards[: model_buf.size(), 0], raw(model_buf, model_buf.size()) / rms, rtol=1e-5, atol=1e-6)
    agent.save(tmp_path / "agent")
    loaded = MSoBiRL.load(tmp_path / "agent", env=gym.make("Pendulum-v1"))
    assert loaded.reward_scaling and float(loaded.inner_reward.rms) == pytest.approx(rms)


def test_rollout_schedule_and_bad_arguments():
    assert [rollout_length(t, (100, 200, 1, 5)) for t in (0, 100, 150, 200, 1000)] == [1, 1, 3, 5, 5]
    with pytest.raises(ValueError, match="real_ratio"):
        MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), real_ratio=0.0)
    with pytest.raises(ValueError, match="rollout_schedule"):
        MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), rollout_schedule=(0, 10, 3, 1))
    with pytest.raises(ValueError, match="estimator must be one of"):
        MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), estimator="magic")
    mdp = garnet(4, 2, 2, seed=0)
    with pytest.raises(ValueError, match="transition_model"):
        DiscreteMSoBiRL("MlpPolicy", TabularEnv(mdp), feedback=SyntheticTeacher(), transition_model=np.ones((3, 2, 3)) / 3)
