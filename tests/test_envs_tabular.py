"""TabularEnv: Gymnasium / SB3 API compliance, dynamics, rewards, state save/restore."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers birl/ ids)
from birl.tabular import garnet, gridworld
from envs import TabularEnv


@pytest.fixture
def mdp():
    return garnet(6, 3, 4, gamma=0.9, tau=0.5, seed=1)


def test_spaces_and_model_attributes(mdp):
    env = TabularEnv(mdp)
    assert env.observation_space == gym.spaces.Discrete(6)
    assert env.action_space == gym.spaces.Discrete(3)
    assert env.P is mdp.P and env.mdp is mdp
    np.testing.assert_array_equal(env.features, mdp.features)
    np.testing.assert_array_equal(env.rho, mdp.rho)
    assert env.gamma == mdp.gamma and env.tau == mdp.tau


@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_gymnasium_and_sb3_check_env(mdp, render_mode):
    x = np.arange(4, dtype=float)
    env = TabularEnv(mdp, x, render_mode=render_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the checkers must not warn either ...
        warnings.filterwarnings("ignore", message=".*not having a spec")  # ... except: built without make
        check_env(env, skip_render_check=render_mode is None)
        sb3_check_env(TabularEnv(mdp, x, render_mode=render_mode))


@pytest.mark.parametrize("env_id", ["birl/Garnet-v0", "birl/GridWorld-v0"])
def test_registered_ids(env_id):
    env = gym.make(env_id, render_mode="ansi", max_episode_steps=7)
    check_env(env.unwrapped)
    assert isinstance(env.unwrapped, TabularEnv)
    obs, _ = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert isinstance(env.render(), str)
    frame = gym.make(env_id, render_mode="rgb_array").unwrapped
    frame.reset(seed=0)
    img = frame.render()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    n = 0
    while True:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        n += 1
        assert not terminated
        if truncated:
            break
    assert n == 7


def test_garnet_id_kwargs_fix_the_mdp():
    a = gym.make("birl/Garnet-v0", n_states=5, n_actions=2, n_features=3, gamma=0.8, tau=2.0, seed=4).unwrapped
    b = garnet(5, 2, 3, gamma=0.8, tau=2.0, seed=4)
    np.testing.assert_array_equal(a.P, b.P)
    np.testing.assert_array_equal(a.features, b.features)
    assert (a.gamma, a.tau) == (0.8, 2.0)
    g = gym.make("birl/GridWorld-v0", size=3, slip=0.0).unwrapped
    np.testing.assert_array_equal(g.P, gridworld(3, slip=0.0).P)
    assert g.reset(seed=0)[0] == 0  # rho puts all mass on the start cell


def test_rewards_follow_the_table(mdp):
    x = np.array([0.5, -1.0, 2.0, 0.1])
    table = mdp.reward(x)
    env = TabularEnv(mdp, x)
    s, _ = env.reset(seed=0)
    for _ in range(50):
        a = int(env.action_space.sample())
        s_next, r, *_ = env.step(a)
        assert r == table[s, a]
        s = s_next
    env2 = TabularEnv(mdp, reward_table=-table)
    s, _ = env2.reset(seed=0)
    assert env2.step(1)[1] == -table[s, 1]
    assert np.all(TabularEnv(mdp).reward_table == 0.0)


def test_empirical_transitions_match_P():
    mdp = garnet(4, 2, 2, seed=0)
    env = TabularEnv(mdp, max_episode_steps=None)
    counts = np.zeros((4, 2, 4))
    s, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40_000):
        a = int(rng.integers(2))
        s_next, *_ = env.step(a)
        counts[s, a, s_next] += 1
        s = s_next
    visited = counts.sum(-1) > 2000
    emp = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
    assert visited.sum() >= 4
    np.testing.assert_allclose(emp[visited], mdp.P[visited], atol=0.04)


def test_reset_samples_rho_and_is_seeded():
    mdp = garnet(5, 2, 2, seed=0)
    mdp.rho[:] = [0.0, 0.5, 0.0, 0.5, 0.0]
    env = TabularEnv(mdp)
    starts = {env.reset(seed=i)[0] for i in range(50)}
    assert starts == {1, 3}
    assert env.reset(seed=7)[0] == TabularEnv(mdp).reset(seed=7)[0]
    assert env.reset(options={"state": 4})[0] == 4


def test_get_set_state_replays_identically(mdp):
    env = TabularEnv(mdp, np.ones(4), max_episode_steps=30)
    env.reset(seed=5)
    for _ in range(10):
        env.step(0)
    snap = env.get_state()
    actions = [1, 2, 0, 1, 1, 2, 0, 0, 1, 2] * 3
    first = [env.step(a) for a in actions]
    env.set_state(snap)
    second = [env.step(a) for a in actions]
    assert first == second
    assert first[19][3] is True  # truncation counter restored as well (10 + 20 = 30)
    # a snapshot can seed another env over the same MDP
    other = TabularEnv(mdp, np.ones(4), max_episode_steps=30)
    other.set_state(snap)
    assert [other.step(a) for a in actions] == first
    # the snapshot is a copy: stepping did not change it
    assert snap["t"] == 10


def test_bad_arguments(mdp):
    with pytest.raises(TypeError, match="mdp"):
        TabularEnv("not an mdp")
    with pytest.raises(ValueError, match="reward_table"):
        TabularEnv(mdp, reward_table=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="reward_params or reward_table"):
        TabularEnv(mdp, np.zeros(4), reward_table=np.zeros((6, 3)))
    with pytest.raises(ValueError, match="x"):
        TabularEnv(mdp, np.zeros(3))
    with pytest.raises(ValueError, match="max_episode_steps"):
        TabularEnv(mdp, max_episode_steps=0)
    with pytest.raises(ValueError, match="render_mode"):
        TabularEnv(mdp, render_mode="human")
    with pytest.raises(ValueError, match="grid_shape"):
        TabularEnv(mdp, grid_shape=(2, 2))
    env = TabularEnv(mdp)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(3)
    with pytest.raises(TypeError, match="action"):
        env.step(0.5)
    with pytest.raises(TypeError, match="state"):
        env.set_state({"state": 0})
