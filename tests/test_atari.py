"""DiscreteSoBiRL on a real ALE game: CNN policy, CNN reward on stacked frames, uint8 replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th

from conftest import requires

requires("ale_py")
requires("cv2")  # the standard Atari wrappers resize frames with OpenCV

from stable_baselines3.common.env_util import make_atari_env  # noqa: E402
from stable_baselines3.common.vec_env import VecFrameStack  # noqa: E402

from agents.sobirl import DiscreteSoBiRL  # noqa: E402
from birl.feedback import SyntheticTeacher  # noqa: E402
from birl.reward_models import CnnReward  # noqa: E402
from envs.make import ensure_registered  # noqa: E402

ENV_ID = "ALE/Pong-v5"
STEPS = 300


@pytest.fixture
def pong():
    ensure_registered(ENV_ID)
    # v5 skips 4 frames itself: turn that off so that the standard wrappers' frame skip is the only one
    env = VecFrameStack(make_atari_env(ENV_ID, n_envs=1, seed=0, env_kwargs={"frameskip": 1}), n_stack=4)
    yield env
    env.close()


def test_discrete_sobirl_on_pong(pong):
    reward_model = CnnReward((4, 84, 84), pong.action_space.n, trunk_dim=64, hidden=(32,))
    initial = [p.detach().clone() for p in reward_model.parameters()]
    model = DiscreteSoBiRL(
        "CnnPolicy", pong, feedback=SyntheticTeacher(seed=0), reward_model=reward_model,
        buffer_size=STEPS + 1, optimize_memory_usage=True, replay_buffer_kwargs={"handle_timeout_termination": False},
        learning_starts=100, batch_size=16, train_freq=4, n_queries=20, segment_length=10, outer_freq=100,
        reward_steps=5, reward_batch_size=8, successor_net_arch=(32,), policy_kwargs={"net_arch": [32]}, seed=0,
    )  # fmt: skip
    model.learn(STEPS)

    buffer = model.replay_buffer
    assert model.observation_space.shape == (4, 84, 84)  # channels first after VecTransposeImage
    assert buffer.observations.dtype == np.uint8 and not hasattr(buffer, "next_observations")  # frames stored once
    assert model.num_timesteps == STEPS and 0 < len(model.preferences) <= 20
    assert model._n_outer >= 2
    assert any(not th.equal(p0, p) for p0, p in zip(initial, reward_model.parameters())), "the reward model never moved"
    # the inner learner trains on the CURRENT learned reward: every stored reward is the model's,
    # on the same uint8 frames the preference loss scores (not 255x brighter ones)
    obs = buffer.observations[:, 0]  # one more row than steps: row t + 1 holds the frames after step t
    with th.no_grad():
        expected = reward_model(th.as_tensor(obs[:STEPS]), th.as_tensor(buffer.actions[:STEPS, 0, 0]).long()).numpy()
    np.testing.assert_allclose(buffer.rewards[:STEPS, 0], expected, rtol=1e-4, atol=1e-5)
    # the teacher labelled the game score, not the learned reward
    assert set(np.unique(buffer.true_rewards)) <= {-1.0, 0.0, 1.0}
    action, _ = model.predict(pong.reset(), deterministic=False)
    assert action.shape == (1,) and 0 <= int(action[0]) < pong.action_space.n
