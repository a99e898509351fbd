"""State cloning adapters: clone, step k times, restore, replay the same actions -> same obs."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers birl/ ids)
from birl.tabular import garnet
from envs import EnvSnapshot, ParameterisedReward, TabularEnv, can_clone, get_cloner
from envs.cloning import AleCloner, MujocoCloner, StatefulEnvCloner

from conftest import requires


def rollout(env, actions):
    """Step through ``actions``; returns [(obs, reward, terminated, truncated)] (obs copied)."""
    out = []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        out.append((np.array(obs, copy=True), float(r), term, trunc))
        if term or trunc:
            break
    return out


def assert_same(first, second):
    assert len(first) == len(second) > 0
    for (o1, r1, t1, u1), (o2, r2, t2, u2) in zip(first, second):
        np.testing.assert_array_equal(o1, o2)
        assert (r1, t1, u1) == (r2, t2, u2)


def round_trip(env, k, warmup, seed=0):
    """Clone after ``warmup`` steps, roll out ``k`` actions, restore, replay; compare."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(warmup):
        env.step(env.action_space.sample())
    cloner = get_cloner(env)
    snap = cloner.clone(env)
    actions = [env.action_space.sample() for _ in range(k)]
    first = rollout(env, actions)
    cloner.restore(env, snap)
    second = rollout(env, actions)
    assert_same(first, second)
    # the snapshot stays valid: restore once more
    cloner.restore(env, snap)
    assert_same(first, rollout(env, actions))
    return cloner, snap, first


class NoCloneEnv(gym.Env):
    """An env without any state save/restore support."""

    observation_space = gym.spaces.Discrete(2)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return 0, {}

    def step(self, action):
        return 0, 0.0, False, False, {}


class SumReward(torch.nn.Module):
    """Protocol-conforming reward used to check that wrapper state is restored too."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, obs, act, next_obs):
        def flat(x):
            return x.reshape(x.shape[0], -1).float().sum(1)

        return self.w * (flat(obs) - flat(next_obs)) + flat(act)


# ----------------------------------------------------------------- tabular
def test_tabular_round_trip_through_gym_make_wrappers():
    env = gym.make("birl/Garnet-v0", n_states=8, n_actions=3, n_features=2, reward_params=np.array([1.0, -1.0]))
    cloner, snap, _ = round_trip(env, k=25, warmup=10)
    assert isinstance(cloner, StatefulEnvCloner) and isinstance(snap, EnvSnapshot)
    assert can_clone(env) and can_clone(env.unwrapped)


def test_tabular_round_trip_restores_time_limit_and_reward_wrapper():
    base = gym.make("birl/GridWorld-v0", size=4, max_episode_steps=None)
    env = ParameterisedReward(gym.wrappers.TimeLimit(base, 12), SumReward())
    # k runs past the TimeLimit: truncation must come at the same step after the restore
    _, _, first = round_trip(env, k=20, warmup=5)
    assert first[-1][3] is True and len(first) == 7


def test_tabular_snapshot_moves_between_identical_envs():
    mdp = garnet(6, 2, 2, seed=3)
    a, b = TabularEnv(mdp, np.ones(2)), TabularEnv(mdp, np.ones(2))
    a.reset(seed=1)
    a.step(0)
    cloner = get_cloner(a)
    snap = cloner.clone(a)
    actions = [1, 0, 1, 1, 0, 0, 1] * 3
    first = rollout(a, actions)
    cloner.restore(b, snap)
    assert_same(first, rollout(b, actions))


# ------------------------------------------------------------------ MuJoCo
@pytest.mark.parametrize("env_id", ["InvertedPendulum-v5", "Hopper-v5"])
def test_mujoco_round_trip(env_id):
    requires("mujoco")
    env = gym.make(env_id)
    cloner, snap, first = round_trip(env, k=30, warmup=5)
    assert isinstance(cloner, MujocoCloner)
    # np_random is part of the snapshot: a reset after restoring draws the same initial state
    cloner.restore(env, snap)
    o1, _ = env.reset()
    cloner.restore(env, snap)
    o2, _ = env.reset()
    np.testing.assert_array_equal(o1, o2)
    # restoring changes the env's own MjData in place (renderers keep pointing at it)
    data = env.unwrapped.data
    cloner.restore(env, snap)
    assert env.unwrapped.data is data


def test_mujoco_with_reward_wrapper():
    requires("mujoco")
    env = ParameterisedReward(gym.make("InvertedPendulum-v5"), SumReward())
    round_trip(env, k=15, warmup=3)


# --------------------------------------------------------------------- ALE
def test_ale_round_trip_with_sticky_actions():
    ale_py = requires("ale_py")
    gym.register_envs(ale_py)
    # default v5 settings: sticky actions (p=0.25) draw from the emulator RNG
    env = gym.make("ALE/Pong-v5")
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    cloner, _, first = round_trip(env, k=40, warmup=60)
    assert isinstance(cloner, AleCloner)
    assert any(not np.array_equal(first[0][0], o) for o, *_ in first[1:])  # the screen did change


def test_ale_stochastic_frameskip_uses_np_random():
    ale_py = requires("ale_py")
    gym.register_envs(ale_py)
    env = gym.make("ALE/Breakout-v5", frameskip=(2, 5), obs_type="ram")
    round_trip(env, k=40, warmup=20)


# ------------------------------------------------------------------ errors
def test_non_clonable_env_raises_a_clear_type_error():
    env = NoCloneEnv()
    assert not can_clone(env)
    with pytest.raises(TypeError, match="NoCloneEnv"):
        get_cloner(env)
    gym.register("test/NoClone-v0", entry_point=NoCloneEnv)
    try:
        with pytest.raises(TypeError, match="test/NoClone-v0"):
            get_cloner(gym.make("test/NoClone-v0"))
    finally:
        gym.registry.pop("test/NoClone-v0")
    assert not can_clone("CartPole-v1")
    with pytest.raises(TypeError, match="env must be a gymnasium.Env"):
        get_cloner("CartPole-v1")


def test_restore_rejects_foreign_snapshots():
    env = gym.make("birl/Garnet-v0")
    env.reset(seed=0)
    cloner = get_cloner(env)
    with pytest.raises(TypeError, match="state"):
        cloner.restore(env, {"state": 0})
    snap = cloner.clone(env)
    with pytest.raises(ValueError, match="wrapper"):
        cloner.restore(env.unwrapped, snap)


def test_restore_rejects_a_snapshot_of_another_kind():
    requires("mujoco")
    tab = gym.make("birl/Garnet-v0")
    tab.reset(seed=0)
    snap = get_cloner(tab).clone(tab)
    mj = gym.make("InvertedPendulum-v5")
    mj.reset(seed=0)
    with pytest.raises(TypeError, match="EnvSnapshot from a MujocoCloner"):
        get_cloner(mj).restore(mj, snap)
