"""Offline ML-IRL (agents.offline) and behaviour cloning (agents.bc): no env steps during learn,
a short learning run on Pendulum-v1, save/load/predict round trip, dataset validation, and BC
imitating a linear expert."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor

from agents.bc import BehaviourCloning
from agents.offline import OfflineMLIRL, PenalisedModelReplayBuffer, load_dataset
from birl.feedback import Demonstrations, Trajectory


class StepCounter(gym.Wrapper):
    """Counts ``step`` calls (the offline agent must make none while learning)."""

    def __init__(self, env):
        super().__init__(env)
        self.n_steps = 0

    def step(self, action):
        self.n_steps += 1
        return super().step(action)


def linear_expert(obs):
    """A simple stabilising controller on Pendulum's (cos, sin, thetadot)."""
    return np.clip(np.array([-2.0 * obs[1] - 0.5 * obs[2]], np.float32), -2.0, 2.0)


@pytest.fixture(scope="module")
def demos():
    return Demonstrations.collect(linear_expert, gym.make("Pendulum-v1"), 2, seed=0, max_steps=60)


def small(**over):
    kw = dict(seed=0, outer_freq=100, reward_steps=3, demo_batch_size=64, batch_size=32,
              policy_kwargs=dict(net_arch=[32, 32]), dynamics_kwargs=dict(hidden=(32, 32), n_members=3, n_elites=2),
              model_fit_kwargs=dict(max_epochs=5), rollout_batch_size=50, model_rollout_freq=100, branch_horizon=5)
    kw.update(over)
    return kw


def test_learn_never_steps_env_and_round_trips(demos, tmp_path):
    env = StepCounter(gym.make("Pendulum-v1"))
    extra = Demonstrations.collect(lambda o: np.zeros(1, np.float32), gym.make("Pendulum-v1"), 1, seed=1, max_steps=40)
    agent = OfflineMLIRL("MlpPolicy", env, feedback=demos, offline_data=extra, **small())
    agent.set_logger(configure(str(tmp_path / "log"), ["csv"]))
    before = [p.detach().clone() for p in agent.reward_model.parameters()]
    agent.learn(300, log_interval=1)
    assert env.n_steps == 0
    assert agent.num_timesteps == 300 and agent._n_outer == 3
    # dataset in the replay buffer (expert + extra), rollouts in the penalised model buffer
    assert agent._n_real() == demos.n_transitions + extra.n_transitions
    assert isinstance(agent.model_buffer, PenalisedModelReplayBuffer) and agent.model_buffer.size() > 0
    assert any(not th.equal(a, b) for a, b in zip(before, agent.reward_model.parameters()))
    # the penalty survives relabelling: stored reward = r_theta - lambda * U
    buf, n = agent.model_buffer, agent.model_buffer.size()
    with th.no_grad():
        r = agent._reward_fn(th.as_tensor(buf.observations[:n, 0]), th.as_tensor(buf.actions[:n, 0]),
                             th.as_tensor(buf.next_observations[:n, 0])).numpy()
    assert np.allclose(buf.rewards[:n, 0], r - agent.penalty_coef * buf.penalties[:n, 0], atol=1e-4)
    assert buf.penalties[:n].max() > 0
    logged = (tmp_path / "log" / "progress.csv").read_text().splitlines()[0].split(",")
    for key in ("outer/loss", "model/val_mse_elites", "model/uncertainty_mean", "train/critic_loss"):
        assert key in logged, key

    obs = np.stack([demos[0].obs[i] for i in range(5)])
    act, _ = agent.predict(obs, deterministic=True)
    agent.save(tmp_path / "agent")
    env2 = StepCounter(gym.make("Pendulum-v1"))
    loaded = OfflineMLIRL.load(tmp_path / "agent", env=env2)
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], act)
    for a, b in zip(agent.reward_model.parameters(), loaded.reward_model.parameters()):
        assert th.equal(a, b)
    assert loaded.uncertainty == agent.uncertainty and loaded.penalty_coef == agent.penalty_coef
    # a loaded agent refills its replay buffer from the stored dataset and keeps learning offline
    loaded.learn(50, reset_num_timesteps=False)
    assert env2.n_steps == 0 and loaded.num_timesteps == 350
    assert loaded._n_real() == demos.n_transitions + extra.n_transitions
    mean, _ = evaluate_policy(loaded, Monitor(gym.make("Pendulum-v1")), n_eval_episodes=1)
    assert np.isfinite(mean)


def test_dataset_files_load(demos, tmp_path):
    demos.save(tmp_path / "demos.npz")
    again = load_dataset(str(tmp_path / "demos.npz"))
    assert again.n_transitions == demos.n_transitions
    with pytest.raises(TypeError, match="source"):
        load_dataset(3)


def test_bad_datasets_fail_at_construction(demos):
    env = gym.make("Pendulum-v1")
    with pytest.raises(ValueError, match="feedback is empty"):
        OfflineMLIRL("MlpPolicy", env, feedback=Demonstrations(), **small())
    with pytest.raises(ValueError, match="feedback is required"):
        OfflineMLIRL("MlpPolicy", env, feedback=None, **small())
    with pytest.raises(TypeError, match="feedback must be a birl.feedback.Demonstrations"):
        OfflineMLIRL("MlpPolicy", env, feedback=[1, 2], **small())
    wrong_obs = Demonstrations([Trajectory(np.zeros((4, 5), np.float32), np.zeros((3, 1), np.float32), np.zeros(3))])
    with pytest.raises(ValueError, match=r"feedback: trajectory 0 has observations of shape \(5,\)"):
        OfflineMLIRL("MlpPolicy", env, feedback=wrong_obs, **small())
    wrong_act = Demonstrations([Trajectory(np.zeros((4, 3), np.float32), np.zeros((3, 2), np.float32), np.zeros(3))])
    with pytest.raises(ValueError, match=r"offline_data: trajectory 0 has actions of shape \(2,\)"):
        OfflineMLIRL("MlpPolicy", env, feedback=demos, offline_data=wrong_act, **small())
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        OfflineMLIRL("MlpPolicy", env, feedback=demos, uncertainty="variance", **small())
    with pytest.raises(ValueError, match="penalty_coef"):
        OfflineMLIRL("MlpPolicy", env, feedback=demos, penalty_coef=-1.0, **small())
    with pytest.raises(ValueError, match="model_train_freq"):
        OfflineMLIRL("MlpPolicy", env, feedback=demos, model_train_freq=10, **small())
    with pytest.raises(ValueError, match="buffer_size must hold the whole dataset"):
        OfflineMLIRL("MlpPolicy", env, feedback=demos, buffer_size=10, **small())
    with pytest.raises(ValueError, match="reward_scaling=True is not supported by OfflineMLIRL"):
        OfflineMLIRL("MlpPolicy", env, feedback=demos, reward_scaling=True, **small())


def test_max_std_uncertainty_is_nonnegative(demos):
    agent = OfflineMLIRL("MlpPolicy", gym.make("Pendulum-v1"), feedback=demos, uncertainty="max_std", **small())
    agent.learn(2)
    obs = th.as_tensor(demos[0].obs[:-1])
    act = th.as_tensor(agent._buffer_actions(demos[0].acts))
    u = agent.model_uncertainty(obs, act)
    assert u.shape == (len(obs),) and bool((u > 0).all())


def test_bc_imitates_a_linear_expert(tmp_path):
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    theta, thetadot = rng.uniform(-np.pi, np.pi, 2000), rng.uniform(-8, 8, 2000)
    obs = np.stack([np.cos(theta), np.sin(theta), thetadot], 1).astype(np.float32)
    W = np.array([[0.3, -0.8, -0.15]], np.float32)  # stays inside [-2, 2]: exactly imitable
    acts = obs @ W.T
    for loss in ("gaussian_nll", "mse"):
        bc = BehaviourCloning(env.observation_space, env.action_space, hidden=(64, 64), loss=loss, max_epochs=300,
                              patience=20, seed=0)
        result = bc.fit((obs, acts))
        assert result.n_val == 400 and result.best_epoch >= 0
        pred, _ = bc.predict(obs)
        assert pred.shape == (2000, 1)
        assert np.sqrt(np.mean((pred - acts) ** 2)) < 0.05, loss
    single, _ = bc.predict(obs[0])
    assert single.shape == (1,)
    bc.save(tmp_path / "bc.pt")
    again = BehaviourCloning.load(tmp_path / "bc.pt")
    assert np.array_equal(again.predict(obs)[0], pred)
    mean, _ = evaluate_policy(again, Monitor(gym.make("Pendulum-v1")), n_eval_episodes=1)
    assert np.isfinite(mean)


def test_bc_rejects_bad_data():
    env = gym.make("Pendulum-v1")
    bc = BehaviourCloning(env.observation_space, env.action_space, max_epochs=2)
    with pytest.raises(ValueError, match="no transition"):
        bc.fit(Demonstrations())
    with pytest.raises(ValueError, match=r"observations must have shape \[N, 3\]"):
        bc.fit((np.zeros((10, 4)), np.zeros((10, 1))))
    with pytest.raises(ValueError, match="loss must be one of"):
        BehaviourCloning(env.observation_space, env.action_space, loss="l1")
