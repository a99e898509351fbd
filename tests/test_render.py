"""Segment renderers (envs.render): frames rebuilt from observations alone."""

import gymnasium as gym
import numpy as np
import pytest

from envs.render import ImageRenderer, fit_frame, make_renderer
from envs.tabular_env import make_gridworld_env

from conftest import requires, skip_unless_ci


def rollout_obs(env, n, seed=0):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(n - 1):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    return np.stack(out)


def check_frames(frames, n, size):
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[0] == n and frames.shape[-1] == 3
    assert max(frames.shape[1:3]) == size


def test_fit_frame_keeps_aspect_and_makes_grey_rgb():
    f = fit_frame(np.arange(12, dtype=np.uint8).reshape(3, 4), 8)
    assert f.shape == (6, 8, 3) and (f[..., 0] == f[..., 2]).all()
    assert f[0, 0, 0] == 0 and f[-1, -1, 0] == 11  # nearest neighbour, corners kept
    with pytest.raises(ValueError, match="frame"):
        fit_frame(np.zeros((2, 2, 5)), 8)


@pytest.mark.parametrize("channel_first", [True, False])
def test_image_observations_show_the_last_frame_of_the_stack(channel_first):
    obs = np.zeros((2, 4, 10, 10), np.uint8)  # [H, stack, h, w] like SB3's transposed Atari frames
    obs[:, 3, 2:5, 2:5] = 200  # only the newest frame has the square
    obs[:, 0] = 50
    if not channel_first:
        obs = np.moveaxis(obs, 1, -1)
    frames = ImageRenderer(size=20)(obs)
    check_frames(frames, 2, 20)
    assert frames[0, 6, 6, 0] == 200 and frames[0, 0, 0, 0] == 0


def test_image_env_and_rgb_observations():
    class RgbEnv(gym.Env):
        observation_space = gym.spaces.Box(0, 255, (12, 16, 3), np.uint8)
        action_space = gym.spaces.Discrete(2)

    renderer = make_renderer(RgbEnv(), size=32)
    obs = np.random.default_rng(0).integers(0, 255, (3, 12, 16, 3), dtype=np.uint8)
    frames = renderer(obs)
    check_frames(frames, 3, 32)
    assert frames.shape[1:3] == (24, 32)
    np.testing.assert_array_equal(frames[:, ::2, ::2], obs)


def test_pendulum_frames_follow_the_angle():
    requires("pygame")
    angles = np.array([0.0, np.pi / 2, np.pi])
    obs = np.stack([np.cos(angles), np.sin(angles), np.zeros(3)], axis=1).astype(np.float32)
    frames = make_renderer("Pendulum-v1", size=64)(obs)
    check_frames(frames, 3, 64)
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    np.testing.assert_array_equal(frames[0], make_renderer("Pendulum-v1", size=64)(obs[:1])[0])  # a pure function of obs


def test_tabular_frames_mark_the_state():
    env = make_gridworld_env(render_mode="rgb_array")
    renderer = make_renderer(env, size=40)
    frames = renderer(np.array([0, 1, 0]))
    check_frames(frames, 3, 40)
    np.testing.assert_array_equal(frames[0], frames[2])
    assert not np.array_equal(frames[0], frames[1])
    one_hot = np.eye(env.observation_space.n)[[0, 1]]
    np.testing.assert_array_equal(renderer(one_hot), frames[:2])


def test_mujoco_frames_from_observations():
    requires("mujoco")
    obs = rollout_obs(gym.make("Hopper-v5"), 3)
    try:
        frames = make_renderer("Hopper-v5", size=48)(obs)
    except Exception as err:  # no OpenGL backend on this machine
        if "OpenGL" in str(err) or "EGL" in str(err) or "gl" in type(err).__module__.lower():
            skip_unless_ci(f"MuJoCo cannot render here: {err}")
        raise
    check_frames(frames, 3, 48)
    assert frames.std() > 0
    with pytest.raises(ValueError, match="InvertedDoublePendulum-v5.*qpos, qvel"):
        make_renderer("InvertedDoublePendulum-v5")


def test_unsupported_envs_are_named():
    class Blob(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
        action_space = gym.spaces.Discrete(2)
        render_mode = "rgb_array"

    with pytest.raises(ValueError, match="Blob.*no segment renderer"):
        make_renderer(Blob())
    with pytest.raises(ValueError, match="Pendulum-v1.*render_mode='rgb_array'"):
        make_renderer(gym.make("Pendulum-v1"))
    with pytest.raises(ValueError, match="size"):
        make_renderer("Pendulum-v1", size=2)
