"""ParameterisedReward / VecParameterisedReward and the make_* constructors.

``python tests/test_reward_wrapper.py [--threads1]`` measures the VecEnv wrapper's overhead
(a measurement, not a test: timings are never asserted).
"""

import time
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import envs
from birl.tabular import garnet
from envs import (
    ParameterisedReward,
    TabularEnv,
    VecParameterisedReward,
    batch_rewards,
    make_reward_env,
    make_reward_vec_env,
)

from conftest import requires


# ----------------------------------------------------------- test helpers
def _features(x: torch.Tensor, space: spaces.Space) -> torch.Tensor:
    if isinstance(space, spaces.Discrete):
        assert x.dtype == torch.int64 and x.ndim == 1
        return torch.nn.functional.one_hot(x - int(space.start), int(space.n)).float()
    if isinstance(space, spaces.Box):
        assert x.dtype == torch.float32
        return x.flatten(1)
    assert x.dtype == torch.int64
    return x.flatten(1).float()


def _flat_dim(space: spaces.Space) -> int:
    return int(space.n) if isinstance(space, spaces.Discrete) else int(np.prod(space.shape))


class TinyReward(torch.nn.Module):
    """A test reward model following the protocol: linear in (s, a, s') features, then tanh."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, seed: int = 0):
        super().__init__()
        self.observation_space, self.action_space = observation_space, action_space
        torch.manual_seed(seed)
        d = 2 * _flat_dim(observation_space) + _flat_dim(action_space)
        self.linear = torch.nn.Linear(d, 1)
        self.calls = 0
        self.batch_sizes = []

    def forward(self, obs, act, next_obs):
        self.calls += 1
        self.batch_sizes.append(obs.shape[0])
        assert obs.shape[1:] == self.observation_space.shape and act.shape[1:] == self.action_space.shape
        assert not torch.is_grad_enabled()
        z = torch.cat(
            [
                _features(obs, self.observation_space),
                _features(act, self.action_space),
                # weigh s' heavily so that using the wrong s' shows up
                10.0 * _features(next_obs, self.observation_space),
            ],
            dim=1,
        )
        return torch.tanh(self.linear(z)).squeeze(-1)


def reference_reward(model, obs, act, next_obs, observation_space, action_space) -> float:
    """The model's reward for one transition, computed by hand (no wrapper code)."""

    def t(x, space):
        x = np.asarray(x)
        if isinstance(space, spaces.Box):
            return torch.as_tensor(x, dtype=torch.float32)[None]
        return torch.as_tensor(x, dtype=torch.int64)[None]

    with torch.no_grad():
        return float(model(t(obs, observation_space), t(act, action_space), t(next_obs, observation_space))[0])


class ImageEnv(gym.Env):
    """A small env with uint8 image observations and Box actions."""

    metadata = {"render_modes": []}

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, (12, 10, 3), np.uint8)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample() if False else self._obs(), {}

    def _obs(self):
        return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)

    def step(self, action):
        self._t += 1
        return self._obs(), float(np.sum(action)), False, self._t >= 5, {}


class DictObsEnv(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Dict({"a": spaces.Discrete(2)})
        self.action_space = spaces.Discrete(2)


def _tabular():
    return TabularEnv(garnet(5, 3, 2, seed=0), np.array([1.0, -0.5]), max_episode_steps=9)


def _make(name):
    if name == "tabular":
        return _tabular()
    if name == "image":
        return ImageEnv()
    return gym.make(name).unwrapped if name != "CartPole-v1" else gym.make(name, max_episode_steps=30).unwrapped


ENVS = ["Pendulum-v1", "CartPole-v1", "tabular", "image"]


# ------------------------------------------------------------ single env
@pytest.mark.parametrize("name", ENVS)
def test_check_env(name):
    base = _make(name)
    env = ParameterisedReward(base, TinyReward(base.observation_space, base.action_space))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*different from the unwrapped")
        warnings.filterwarnings("ignore", message=".*not having a spec")
        warnings.filterwarnings("ignore", message=".*(symmetric and normalized|infinity)")  # env design hints
        check_env(env, skip_render_check=True)
    base2 = _make(name)
    sb3_check_env(ParameterisedReward(base2, TinyReward(base2.observation_space, base2.action_space)), warn=False)


@pytest.mark.parametrize("name", ENVS)
def test_rewards_true_rewards_and_episode_stats(name):
    env = ParameterisedReward(_make(name), None or TinyReward(_make(name).observation_space, _make(name).action_space))
    twin = _make(name)  # the bare env, driven with the same seed and actions
    model = env.reward_model
    obs, _ = env.reset(seed=11)
    obs_twin, _ = twin.reset(seed=11)
    env.action_space.seed(0)
    true_sum, n, episodes = 0.0, 0, 0
    for _ in range(60):
        a = env.action_space.sample()
        next_obs, r, term, trunc, info = env.step(a)
        _, r_true, term2, trunc2, _ = twin.step(a)
        assert info["true_reward"] == r_true and type(info["true_reward"]) is type(r_true)  # exact
        assert (term, trunc) == (term2, trunc2)
        assert isinstance(r, float)
        assert r == pytest.approx(
            reference_reward(model, obs, a, next_obs, env.observation_space, env.action_space), abs=1e-6
        )
        true_sum += float(r_true)
        n += 1
        obs = next_obs
        if term or trunc:
            assert info["true_episode_return"] == pytest.approx(true_sum, abs=1e-12)
            assert info["true_episode_length"] == n
            episodes += 1
            true_sum, n = 0.0, 0
            obs, _ = env.reset(seed=episodes)
            twin.reset(seed=episodes)
        else:
            assert "true_episode_return" not in info
    assert episodes >= 1 or name == "Pendulum-v1"


def test_monitor_inside_reports_true_return():
    base = gym.make("CartPole-v1")
    env = make_reward_env(Monitor(base), TinyReward(base.observation_space, base.action_space))
    env.reset(seed=0)
    while True:
        _, _, term, trunc, info = env.step(env.action_space.sample())
        if term or trunc:
            break
    assert info["episode"]["r"] == pytest.approx(info["true_episode_return"])
    assert info["episode"]["l"] == info["true_episode_length"]


def test_make_reward_env_from_id_and_kwargs():
    probe = gym.make("Pendulum-v1")
    model = TinyReward(probe.observation_space, probe.action_space)
    env = make_reward_env("Pendulum-v1", model, max_episode_steps=4, g=9.81)
    assert isinstance(env, ParameterisedReward)
    env.reset(seed=0)
    infos = [env.step(env.action_space.sample())[-1] for _ in range(4)]
    assert infos[-1]["true_episode_length"] == 4
    tab = make_reward_env("birl/GridWorld-v0", TinyReward(spaces.Discrete(25), spaces.Discrete(4)), size=5)
    assert isinstance(tab.unwrapped, TabularEnv)
    with pytest.raises(ValueError, match="make_kwargs"):
        make_reward_env(probe, model, g=1.0)
    with pytest.raises(TypeError, match="env_id_or_env"):
        make_reward_env(3, model)


def test_device_and_model_without_parameters():
    class BufferOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.tensor([1.0, 2.0, 3.0, 4.0]))

        def forward(self, obs, act, next_obs):
            assert obs.device == self.w.device
            return next_obs @ self.w + act.float()

    base = gym.make("CartPole-v1").unwrapped
    env = ParameterisedReward(base, BufferOnly())
    env.reset(seed=0)
    obs2, r, *_ = env.step(1)
    assert r == pytest.approx(float(obs2.astype(np.float32) @ np.array([1, 2, 3, 4], np.float32)) + 1.0, rel=1e-6)

    class NoParams(torch.nn.Module):
        def forward(self, obs, act, next_obs):
            return act.float()

    env = ParameterisedReward(_tabular(), NoParams())
    env.reset(seed=0)
    assert env.step(2)[1] == 2.0
    if torch.cuda.is_available():
        model = TinyReward(base.observation_space, base.action_space).cuda()
        env = ParameterisedReward(gym.make("CartPole-v1").unwrapped, model)
        env.reset(seed=0)
        assert isinstance(env.step(0)[1], float)


def test_bad_arguments():
    base = gym.make("CartPole-v1").unwrapped
    with pytest.raises(TypeError, match="reward_model"):
        ParameterisedReward(base, lambda o, a, n: o)
    with pytest.raises(TypeError, match="observation_space"):
        ParameterisedReward(DictObsEnv(), TinyReward(spaces.Discrete(2), spaces.Discrete(2)))
    with pytest.raises(TypeError, match="env"):
        ParameterisedReward("CartPole-v1", TinyReward(base.observation_space, base.action_space))

    class WrongShape(torch.nn.Module):
        def forward(self, obs, act, next_obs):
            return torch.zeros(obs.shape[0], 2)

    env = ParameterisedReward(base, WrongShape())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"reward_model must return a tensor of shape \[1\]"):
        env.step(0)
    env = ParameterisedReward(gym.make("CartPole-v1").unwrapped, TinyReward(base.observation_space, base.action_space))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    with pytest.raises(ValueError, match="actions"):
        batch_rewards(env.reward_model, np.zeros((2, 4)), np.zeros(3, np.int64), np.zeros((2, 4)),
                      base.observation_space, base.action_space)


# ------------------------------------------------------------- VecEnv
def _vec_vs_single(env_id, n_envs, steps, seed=3, **env_kwargs):
    probe = gym.make(env_id, **env_kwargs)
    model = TinyReward(probe.observation_space, probe.action_space)
    venv = make_reward_vec_env(env_id, model, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    singles = [make_reward_env(Monitor(gym.make(env_id, **env_kwargs)), model) for _ in range(n_envs)]
    obs = venv.reset()
    last = [s.reset(seed=seed + i)[0] for i, s in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(last))
    rng = np.random.default_rng(0)
    done_steps, sums = 0, np.zeros(n_envs)
    for _ in range(steps):
        actions = np.stack([probe.action_space.sample() for _ in range(n_envs)])
        if isinstance(probe.action_space, spaces.Discrete):
            actions = rng.integers(0, probe.action_space.n, n_envs)
        calls = model.calls
        obs, rews, dones, infos = venv.step(actions)
        assert model.calls == calls + 1 and model.batch_sizes[-1] == n_envs  # one batched pass
        assert rews.dtype == np.float32 and rews.shape == (n_envs,)
        for i, single in enumerate(singles):
            o, r, term, trunc, info = single.step(actions[i])
            assert dones[i] == (term or trunc)
            assert infos[i]["true_reward"] == np.float32(info["true_reward"])
            sums[i] += infos[i]["true_reward"]
            # the batched reward equals the per-env reward, on auto-reset steps too
            assert rews[i] == pytest.approx(r, abs=1e-6)
            if dones[i]:
                done_steps += 1
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                ref = reference_reward(model, last[i], actions[i], o, probe.observation_space, probe.action_space)
                assert rews[i] == pytest.approx(ref, abs=1e-6)
                assert infos[i]["true_episode_return"] == pytest.approx(sums[i], abs=1e-9)
                assert infos[i]["true_episode_return"] == pytest.approx(info["true_episode_return"], rel=1e-6)
                assert infos[i]["true_episode_length"] == info["true_episode_length"]
                assert infos[i]["episode"]["l"] == info["true_episode_length"]  # Monitor inside
                sums[i] = 0.0
                o, _ = single.reset()
            np.testing.assert_array_equal(obs[i], o)
            last[i] = o
    return done_steps


def test_vec_rewards_equal_per_env_rewards_discrete():
    assert _vec_vs_single("CartPole-v1", 3, 120, max_episode_steps=15) >= 6


def test_vec_rewards_equal_per_env_rewards_box():
    assert _vec_vs_single("Pendulum-v1", 2, 25, max_episode_steps=10) >= 4


def test_vec_tabular_and_image():
    assert _vec_vs_single("birl/Garnet-v0", 4, 30, n_states=7, n_actions=3, n_features=2,
                          reward_params=np.array([1.0, 2.0]), max_episode_steps=6) >= 8
    model = TinyReward(ImageEnv().observation_space, ImageEnv().action_space)
    venv = VecParameterisedReward(DummyVecEnv([ImageEnv, ImageEnv]), model)
    venv.reset()
    for _ in range(5):
        _, rews, dones, infos = venv.step(np.zeros((2, 2), np.float32))
    assert dones.all() and all(info["true_episode_length"] == 5 for info in infos)


def test_cnn_reward_gets_the_same_reward_from_the_wrappers_as_on_uint8_frames():
    """Regression: the wrappers and the replay relabelling (``batch_rewards``) hand image frames to
    the model as float32 0..255, preference segments as uint8; ``CnnReward`` once read float frames
    as already scaled, so Pong's inner agent was paid rewards of order 1e4 for 255x brighter frames."""
    from birl.reward_models import CnnReward

    torch.manual_seed(0)
    obs_space, act_space = spaces.Box(0, 255, (2, 40, 40), np.uint8), spaces.Discrete(3)
    model = CnnReward(obs_space.shape, 3, trunk_dim=16, hidden=(8,), use_next_obs=True)
    rng = np.random.default_rng(0)
    obs, nxt = (rng.integers(0, 256, (6,) + obs_space.shape, dtype=np.uint8) for _ in range(2))
    acts = rng.integers(0, 3, 6)
    with torch.no_grad():
        on_uint8 = model(torch.as_tensor(obs), torch.as_tensor(acts), torch.as_tensor(nxt)).numpy()
    np.testing.assert_allclose(batch_rewards(model, obs, acts, nxt, obs_space, act_space), on_uint8, rtol=1e-5, atol=1e-6)


def test_vec_wrapper_trains_with_sb3_algorithm():
    from stable_baselines3 import PPO

    probe = gym.make("CartPole-v1")
    venv = make_reward_vec_env("CartPole-v1", TinyReward(probe.observation_space, probe.action_space),
                               n_envs=2, seed=0)
    agent = PPO("MlpPolicy", venv, n_steps=64, batch_size=128, n_epochs=1, seed=0, device="cpu")
    agent.learn(128)
    # SB3 logs Monitor episodes: true returns (CartPole pays 1 per step)
    assert len(agent.ep_info_buffer) > 0
    assert all(ep["r"] == ep["l"] for ep in agent.ep_info_buffer)


def test_make_reward_env_registers_ale_ids_lazily():
    requires("ale_py")
    probe_space = spaces.Box(0, 255, (210, 160, 3), np.uint8)
    env = make_reward_env("ALE/Pong-v5", TinyReward(probe_space, spaces.Discrete(6)))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8
    for _ in range(3):
        _, r, _, _, info = env.step(env.action_space.sample())
        assert isinstance(r, float) and "true_reward" in info


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vec_model_on_cuda_and_moved_between_steps():
    probe = gym.make("CartPole-v1")
    model = TinyReward(probe.observation_space, probe.action_space)
    venv = make_reward_vec_env("CartPole-v1", model, n_envs=4, seed=0, env_kwargs={"max_episode_steps": 5})
    obs = venv.reset()
    for k in range(12):
        if k == 3:
            model.cuda()
        if k == 8:
            model.cpu()
        actions = np.full(4, k % 2)
        new_obs, rews, dones, infos = venv.step(actions)
        nxt = np.stack([info["terminal_observation"] if d else o for o, d, info in zip(new_obs, dones, infos)])
        ref = batch_rewards(model, obs, actions, nxt, probe.observation_space, probe.action_space)
        np.testing.assert_allclose(rews, ref, atol=1e-6)
        obs = new_obs


def test_vec_bad_arguments():
    probe = gym.make("CartPole-v1")
    model = TinyReward(probe.observation_space, probe.action_space)
    with pytest.raises(TypeError, match="venv"):
        VecParameterisedReward(probe, model)
    with pytest.raises(TypeError, match="reward_model"):
        make_reward_vec_env("CartPole-v1", object())
    with pytest.raises(ValueError, match="n_envs"):
        make_reward_vec_env("CartPole-v1", model, n_envs=0)
    venv = VecParameterisedReward(make_vec_env("CartPole-v1", 2), model)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros(2, np.int64))


# ------------------------------------------------------------- overhead
def measure_overhead(env_id="CartPole-v1", n_envs=8, steps=1000, hidden=64, **env_kwargs):
    """Seconds per VecEnv step: bare, wrapped with a constant (null) model, wrapped with an MLP.

    The null model isolates the wrapper's own cost (tensor conversion, bookkeeping) from the
    reward model's forward pass.  Same actions for all three.
    """
    probe = gym.make(env_id, **env_kwargs)
    d = 2 * _flat_dim(probe.observation_space) + _flat_dim(probe.action_space)

    class MLPReward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def forward(self, obs, act, next_obs):
            o, a = _features(obs, probe.observation_space), _features(act, probe.action_space)
            o2 = _features(next_obs, probe.observation_space)
            return self.net(torch.cat([o, a, o2], 1)).squeeze(-1)

    class NullReward(torch.nn.Module):
        def forward(self, obs, act, next_obs):
            return torch.zeros(obs.shape[0])

    rng = np.random.default_rng(0)
    if isinstance(probe.action_space, spaces.Discrete):
        actions = rng.integers(0, probe.action_space.n, (steps, n_envs))
    else:
        actions = rng.uniform(probe.action_space.low, probe.action_space.high,
                              (steps, n_envs) + probe.action_space.shape).astype(np.float32)

    def run(venv):
        venv.reset()
        t0 = time.perf_counter()
        for k in range(steps):
            venv.step(actions[k])
        return (time.perf_counter() - t0) / steps

    venvs = {
        "bare": make_vec_env(env_id, n_envs=n_envs, seed=0, env_kwargs=env_kwargs),
        "null": make_reward_vec_env(env_id, NullReward(), n_envs=n_envs, seed=0, env_kwargs=env_kwargs),
        "mlp": make_reward_vec_env(env_id, MLPReward(), n_envs=n_envs, seed=0, env_kwargs=env_kwargs),
    }
    for v in venvs.values():
        run(v)  # warm-up
    # interleave the repeats so that load changes on the machine hit all three alike
    best = {k: np.inf for k in venvs}
    for _ in range(3):
        for k, v in venvs.items():
            best[k] = min(best[k], run(v))
    return best


def _format(env_id, n_envs, t):
    return (f"{env_id:16s} n_envs={n_envs:3d}: bare {t['bare'] * 1e6:7.1f} us/step | wrapper alone (null model) "
            f"+{(t['null'] - t['bare']) * 1e6:6.1f} us | with MLP-64 reward +{(t['mlp'] - t['bare']) * 1e6:6.1f} us "
            f"({t['mlp'] / t['bare']:.2f}x)")


if __name__ == "__main__":
    import sys

    if "--threads1" in sys.argv:
        torch.set_num_threads(1)
    print(f"torch threads: {torch.get_num_threads()}")
    for env_id, n in (("CartPole-v1", 1), ("CartPole-v1", 8), ("CartPole-v1", 32), ("Pendulum-v1", 8),
                      ("birl/Garnet-v0", 8)):
        print(_format(env_id, n, measure_overhead(env_id, n_envs=n, steps=2000)))
