"""The known termination rules (envs.termination) agree with the environments' own ``step``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from conftest import requires
from envs.termination import never_terminates, termination_rule

MUJOCO = ["Hopper-v5", "Walker2d-v5", "Ant-v5", "Humanoid-v5", "InvertedPendulum-v5", "HalfCheetah-v5"]


def _transitions(env: gym.Env, steps: int, perturb, seed: int = 0):
    """Random-action transitions ``(obs, act, next_obs, terminated)``, with ``perturb(env, rng)``
    pushing the state around every few steps so that both outcomes occur."""
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    rows = []
    for t in range(steps):
        if t % 5 == 0:
            obs = perturb(env, rng)
        act = env.action_space.sample()
        nxt, _, terminated, truncated, _ = env.step(act)
        rows.append((obs, act, nxt, terminated))
        obs = env.reset()[0] if terminated or truncated else nxt
    return [torch.as_tensor(np.array(x), dtype=torch.float32) for x in zip(*rows)]


def _perturb_mujoco(env: gym.Env, rng: np.random.Generator) -> np.ndarray:
    u = env.unwrapped
    qpos = u.data.qpos.copy() + rng.normal(0.0, 0.3, u.model.nq)
    qvel = u.data.qvel.copy() + rng.normal(0.0, 1.0, u.model.nv)
    u.set_state(qpos, qvel)
    return u._get_obs()


@pytest.mark.parametrize("env_id", MUJOCO)
def test_mujoco_rules_match_the_envs(env_id):
    requires("mujoco")
    env = gym.make(env_id)
    obs, act, nxt, terminated = _transitions(env, 400, _perturb_mujoco)
    env.close()
    predicted = termination_rule(env_id)(obs, act, nxt)
    assert predicted.dtype == torch.bool and predicted.shape == terminated.shape
    np.testing.assert_array_equal(predicted.numpy(), terminated.bool().numpy())
    if env_id != "HalfCheetah-v5":
        assert 0 < int(terminated.sum()) < len(terminated), "the check needs both outcomes"


def test_rules_follow_the_env_settings():
    requires("mujoco")
    env = gym.make("Hopper-v5", healthy_z_range=(0.9, float("inf")), exclude_current_positions_from_observation=False)
    obs, act, nxt, terminated = _transitions(env, 300, _perturb_mujoco)
    np.testing.assert_array_equal(termination_rule(env.spec)(obs, act, nxt).numpy(), terminated.bool().numpy())
    assert terminated.any() and not terminated.all()
    assert termination_rule(gym.make("Walker2d-v5", terminate_when_unhealthy=False).spec) is never_terminates


def test_classic_control_rules():
    assert termination_rule("Pendulum-v1") is never_terminates

    def near_goal(env, rng):
        env.unwrapped.state = np.array([rng.uniform(0.3, 0.5), rng.uniform(-0.07, 0.07)])
        return np.array(env.unwrapped.state, dtype=np.float32)

    env = gym.make("MountainCarContinuous-v0")
    obs, act, nxt, terminated = _transitions(env, 200, near_goal)
    np.testing.assert_array_equal(termination_rule("MountainCarContinuous-v0")(obs, act, nxt).numpy(), terminated.bool().numpy())
    assert terminated.any() and not terminated.all()


def test_unknown_and_unregistered_envs():
    assert termination_rule("CartPole-v1") is None
    with pytest.raises(ValueError, match="env_id: 'NoSuchEnv-v0' is not a registered"):
        termination_rule("NoSuchEnv-v0")
