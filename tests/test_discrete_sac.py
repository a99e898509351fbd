"""Tests for the discrete-action SAC agent (agents.discrete_sac, agents.policies)."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from agents.discrete_sac import DEFAULT_TARGET_ENTROPY_RATIO, DiscreteSAC
from agents.policies import CnnDiscreteSACPolicy, DiscreteSACPolicy, MultiInputDiscreteSACPolicy

SMALL_NET = dict(net_arch=[32, 32])


@pytest.fixture(autouse=True, scope="module")
def _single_torch_thread():
    """Tiny networks: intra-op threading only adds overhead (and stalls badly on a busy 2-core box)."""
    n_threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(n_threads)


class TinyImageEnv(gym.Env):
    """uint8 (1, 36, 36) frames, bright or dark; reward 1 for action 1 on bright frames, action 0 on dark."""

    metadata = {"render_modes": []}

    def __init__(self, n_actions: int = 3, horizon: int = 20):
        self.observation_space = spaces.Box(0, 255, shape=(1, 36, 36), dtype=np.uint8)
        self.action_space = spaces.Discrete(n_actions)
        self.horizon = horizon
        self._bright = False
        self._t = 0

    def _obs(self) -> np.ndarray:
        return np.full((1, 36, 36), 200 if self._bright else 20, dtype=np.uint8)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        self._bright = bool(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == int(self._bright))
        self._t += 1
        self._bright = bool(self.np_random.integers(2))
        return self._obs(), reward, False, self._t >= self.horizon, {}


class TinyDictEnv(gym.Env):
    """Dict observation {"x": Box(3), "k": Discrete(2)}, two actions, short episodes."""

    def __init__(self):
        self.observation_space = spaces.Dict({"x": spaces.Box(-1, 1, shape=(3,)), "k": spaces.Discrete(2)})
        self.action_space = spaces.Discrete(2)
        self._t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        obs = self.observation_space.sample()
        return obs, float(action == obs["k"]), self._t >= 10, False, {}


def _filled_model(**kwargs) -> DiscreteSAC:
    """A CartPole model whose replay buffer holds 200 transitions, with no gradient step done yet."""
    params = dict(learning_starts=200, batch_size=32, seed=0, policy_kwargs=SMALL_NET, buffer_size=1000)
    params.update(kwargs)
    model = DiscreteSAC("MlpPolicy", "CartPole-v1", **params)
    model.learn(200)
    assert model._n_updates == 0
    return model


def test_policy_aliases():
    assert DiscreteSAC.policy_aliases["MlpPolicy"] is DiscreteSACPolicy
    assert DiscreteSAC.policy_aliases["CnnPolicy"] is CnnDiscreteSACPolicy
    assert DiscreteSAC.policy_aliases["MultiInputPolicy"] is MultiInputDiscreteSACPolicy


def test_cartpole_smoke_vecenv_and_logging():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = DiscreteSAC("MlpPolicy", env, learning_starts=64, batch_size=32, policy_kwargs=SMALL_NET, seed=0)
    assert model.device.type in ("cpu", "cuda", "mps")  # device="auto"
    assert model.policy.share_features_extractor is False
    assert model.actor.features_extractor is not model.critic.features_extractor
    assert len(model.critic.q_networks) == 2
    model.learn(300)
    assert model.num_timesteps >= 300
    assert model._n_updates > 0

    model.train(gradient_steps=2, batch_size=16)
    logged = model.logger.name_to_value
    for key in ("train/ent_coef", "train/actor_loss", "train/critic_loss", "train/ent_coef_loss", "train/entropy"):
        assert key in logged and np.isfinite(logged[key]), key

    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=False)
    assert actions.shape == (2,) and all(model.action_space.contains(int(a)) for a in actions)
    single_action, _ = model.predict(obs[0], deterministic=True)
    assert single_action.shape == () and model.action_space.contains(int(single_action))
    q_min, values, probs = model.soft_values(obs)
    assert q_min.shape == (2, 2) and values.shape == (2,) and probs.shape == (2, 2)
    assert th.allclose(probs.sum(-1), th.ones(2))
    assert isinstance(model.alpha, float) and model.alpha == model.ent_coef_value() > 0


def test_save_load_roundtrip(tmp_path):
    model = DiscreteSAC("MlpPolicy", "CartPole-v1", learning_starts=50, batch_size=32, policy_kwargs=SMALL_NET, seed=1)
    model.learn(200)
    obs = np.stack([model.observation_space.sample() for _ in range(16)])
    actions, _ = model.predict(obs, deterministic=True)
    path = tmp_path / "dsac.zip"
    model.save(path)

    loaded = DiscreteSAC.load(path, device="cpu")
    loaded_actions, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
    assert loaded.alpha == pytest.approx(model.alpha)
    assert loaded.target_entropy == pytest.approx(model.target_entropy)
    # actor, critic and target critic weights all come back (the target differs from the critic)
    for name in ("actor", "critic", "critic_target"):
        for p, q in zip(getattr(model, name).parameters(), getattr(loaded, name).parameters()):
            assert th.equal(p, q), name
    assert not all(th.equal(p, q) for p, q in zip(model.critic.parameters(), model.critic_target.parameters()))
    # the entropy-coefficient optimiser still drives the loaded log_ent_coef
    assert loaded.ent_coef_optimizer.param_groups[0]["params"][0] is loaded.log_ent_coef
    assert loaded.ent_coef_optimizer.state_dict()["state"]  # Adam moments restored

    loaded.set_env(make_vec_env("CartPole-v1", n_envs=1, seed=2))
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps >= 300


def test_save_load_fixed_ent_coef(tmp_path):
    model = DiscreteSAC("MlpPolicy", "CartPole-v1", ent_coef=0.05, learning_starts=50, policy_kwargs=SMALL_NET)
    model.learn(80)
    assert model.ent_coef_optimizer is None and model.alpha == pytest.approx(0.05)
    model.save(tmp_path / "fixed")
    assert DiscreteSAC.load(tmp_path / "fixed").alpha == pytest.approx(0.05)


def test_cnn_policy_image_env_optimize_memory():
    env = make_vec_env(TinyImageEnv, n_envs=2, seed=0)
    model = DiscreteSAC(
        "CnnPolicy",
        env,
        buffer_size=500,
        learning_starts=40,
        batch_size=16,
        optimize_memory_usage=True,
        replay_buffer_kwargs=dict(handle_timeout_termination=False),
        policy_kwargs=dict(net_arch=[32], features_extractor_kwargs=dict(features_dim=32)),
        seed=0,
    )
    assert model.replay_buffer.observations.dtype == np.uint8
    model.learn(100)
    assert model._n_updates > 0
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (2,)
    q_min, values, probs = model.soft_values(obs)
    assert q_min.shape == (2, 3) and probs.shape == (2, 3)
    assert model.target_entropy == pytest.approx(DEFAULT_TARGET_ENTROPY_RATIO * math.log(3))


def test_multi_input_policy_smoke():
    model = DiscreteSAC("MultiInputPolicy", TinyDictEnv(), learning_starts=20, batch_size=8, policy_kwargs=SMALL_NET)
    model.learn(60)
    obs = model.env.reset()
    assert model.predict(obs)[0].shape == (1,)


def test_rejects_non_discrete_action_space():
    with pytest.raises(TypeError, match="Box"):
        DiscreteSAC("MlpPolicy", "Pendulum-v1")
    with pytest.raises(TypeError, match="MultiDiscrete"):
        DiscreteSACPolicy(
            spaces.Box(-1, 1, shape=(2,)), spaces.MultiDiscrete([2, 2]), lambda _: 1e-3
        )


def test_critic_target_matches_hand_computation():
    model = DiscreteSAC(
        "MlpPolicy", "CartPole-v1", ent_coef=0.3, gamma=0.9, policy_kwargs=dict(net_arch=[8]), seed=3
    )
    # Make the target critics differ from each other and from the online critic
    with th.no_grad():
        for p in model.critic_target.parameters():
            p.add_(0.5 * th.randn_like(p))
    gen = th.Generator().manual_seed(0)
    next_obs = th.randn(5, 4, generator=gen)
    rewards = th.randn(5, 1, generator=gen)
    dones = th.tensor([[0.0], [1.0], [0.0], [0.0], [1.0]])

    target = model.compute_critic_target(rewards, next_obs, dones)

    # By hand, one sample at a time
    expected = []
    for i in range(5):
        s = next_obs[i : i + 1]
        with th.no_grad():
            logits = model.actor.logits_net(model.actor.features_extractor(s))[0].double()
            q1 = model.critic_target.q_networks[0](s)[0].double()
            q2 = model.critic_target.q_networks[1](s)[0].double()
        pi = th.exp(logits) / th.exp(logits).sum()
        v = sum(pi[a] * (min(q1[a], q2[a]) - 0.3 * th.log(pi[a])) for a in range(2))
        expected.append(float(rewards[i, 0]) + 0.9 * (1.0 - float(dones[i, 0])) * float(v))
    np.testing.assert_allclose(target.squeeze(1).numpy(), expected, rtol=1e-5, atol=1e-6)

    # soft_values on the target critics gives the same V(s')
    _, v_target, _ = model.soft_values(next_obs, use_target=True)
    np.testing.assert_allclose(
        (rewards.squeeze(1) + 0.9 * (1 - dones.squeeze(1)) * v_target).numpy(), expected, rtol=1e-5, atol=1e-6
    )


def test_train_step_losses_match_formulas():
    """One gradient step: the logged critic/actor losses equal the formulas on the same batch."""
    model = _filled_model(ent_coef=0.2, gamma=0.95)
    np.random.seed(7)  # the replay buffer samples with numpy's global generator
    replay_data = model.replay_buffer.sample(32)
    obs, a = replay_data.observations, replay_data.actions.long()
    with th.no_grad():
        y = model.compute_critic_target(replay_data.rewards, replay_data.next_observations, replay_data.dones)
        q1, q2 = model.critic(obs)
        critic_loss = 0.5 * (((q1.gather(1, a) - y) ** 2).mean() + ((q2.gather(1, a) - y) ** 2).mean())
    actor_before = copy.deepcopy(model.actor)
    np.random.seed(7)
    model.train(gradient_steps=1, batch_size=32)
    logged = model.logger.name_to_value
    assert logged["train/critic_loss"] == pytest.approx(float(critic_loss), rel=1e-5)
    # the actor step uses the critic after its own step (which the actor step leaves unchanged)
    with th.no_grad():
        pi, log_pi = actor_before.action_probs(obs)
        min_q = th.minimum(*model.critic(obs))
        actor_loss = (pi * (0.2 * log_pi - min_q)).sum(-1).mean()
        entropy = -(pi * log_pi).sum(-1).mean()
    assert logged["train/actor_loss"] == pytest.approx(float(actor_loss), rel=1e-5)
    assert logged["train/entropy"] == pytest.approx(float(entropy), rel=1e-5)


@pytest.mark.parametrize("actor_loss", ["reverse_kl", "forward_kl"])
def test_actor_losses_share_the_soft_greedy_minimiser(actor_loss):
    """Both actor losses, minimised over free logits for fixed Q, give softmax(Q / alpha); the
    forward loss is alpha KL(softmax(Q / alpha) || pi) exactly, so its minimum is 0."""
    model = _filled_model(ent_coef=0.3, actor_loss=actor_loss)
    q = th.tensor([[1.0, 0.2, -0.5], [0.0, 0.0, 2.0]])
    alpha = th.tensor(0.3)
    logits = th.zeros_like(q, requires_grad=True)
    opt = th.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        log_pi = th.log_softmax(logits, -1)
        loss = model._actor_objective(log_pi.exp(), log_pi, q, alpha)
        loss.backward()
        return loss

    opt.step(closure)
    target = th.softmax(q / alpha, -1)
    assert th.allclose(th.softmax(logits.detach(), -1), target, atol=1e-4)
    if actor_loss == "forward_kl":
        log_pi = th.log_softmax(logits.detach(), -1)
        assert float(model._actor_objective(log_pi.exp(), log_pi, q, alpha)) == pytest.approx(0.0, abs=1e-6)


def test_forward_kl_actor_gradient_does_not_vanish_when_collapsed():
    """An actor collapsed onto the wrong action: SAC's reverse-KL gradient in the logits is about 0
    (it cannot recover), the forward-KL gradient is alpha (pi - softmax(Q / alpha))."""
    q = th.tensor([[0.0, 0.4, 0.0]])  # the critic prefers action 1
    alpha = th.tensor(0.5)
    grads = {}
    for actor_loss in ("reverse_kl", "forward_kl"):
        model = _filled_model(ent_coef=0.5, actor_loss=actor_loss)
        logits = th.tensor([[40.0, 0.0, 0.0]], requires_grad=True)  # pi(0) = 1 - 8e-18
        log_pi = th.log_softmax(logits, -1)
        model._actor_objective(log_pi.exp(), log_pi, q, alpha).backward()
        grads[actor_loss] = logits.grad
    pi = th.softmax(th.tensor([[40.0, 0.0, 0.0]]), -1)
    assert grads["reverse_kl"].abs().max() < 1e-10
    assert th.allclose(grads["forward_kl"], alpha * (pi - th.softmax(q / alpha, -1)), atol=1e-6)
    assert grads["forward_kl"][0, 1] < -0.1  # gradient descent raises the preferred action's logit


def test_actor_loss_argument_checked_and_saved(tmp_path):
    with pytest.raises(ValueError, match="actor_loss"):
        DiscreteSAC("MlpPolicy", "CartPole-v1", actor_loss="kl")
    with pytest.raises(ValueError, match="actor_loss='forward_kl' needs ent_coef > 0"):
        DiscreteSAC("MlpPolicy", "CartPole-v1", actor_loss="forward_kl", ent_coef=0.0)
    model = _filled_model(actor_loss="forward_kl")
    model.train(gradient_steps=3, batch_size=32)
    assert np.isfinite(model.logger.name_to_value["train/actor_loss"])
    model.save(tmp_path / "fkl")
    assert DiscreteSAC.load(tmp_path / "fkl").actor_loss == "forward_kl"
    assert DiscreteSAC("MlpPolicy", "CartPole-v1").actor_loss == "reverse_kl"


def test_auto_entropy_coefficient_moves_toward_target():
    # Near-uniform initial policy (entropy ~ log 2) above a low target: alpha must decrease
    model = _filled_model(ent_coef="auto_0.5", target_entropy=0.05)
    alpha0 = model.alpha
    model.train(gradient_steps=10, batch_size=32)
    assert model.alpha < alpha0

    # Almost deterministic policy below a high target: alpha must increase
    model = _filled_model(ent_coef="auto_0.5", target_entropy="auto_0.9")
    assert model.target_entropy == pytest.approx(0.9 * math.log(2))
    last = model.actor.logits_net[-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.copy_(th.tensor([6.0, -6.0]))
    alpha0 = model.alpha
    model.train(gradient_steps=10, batch_size=32)
    assert model.alpha > alpha0
    assert model.logger.name_to_value["train/entropy"] < model.target_entropy

    # A fixed coefficient does not move
    model = _filled_model(ent_coef=0.1)
    model.train(gradient_steps=5, batch_size=32)
    assert model.alpha == pytest.approx(0.1) and model.ent_coef_optimizer is None


def test_target_update_interval():
    model = _filled_model(tau=1.0, target_update_interval=2)

    def same() -> bool:
        return all(th.equal(p, q) for p, q in zip(model.critic.parameters(), model.critic_target.parameters()))

    model.train(gradient_steps=1, batch_size=32)
    assert not same()
    model.train(gradient_steps=1, batch_size=32)
    assert same()


@pytest.mark.slow
def test_cartpole_beats_random():
    """Learning check (not timed): ~15k steps of CartPole-v1 should beat a random policy (~22)."""
    model = DiscreteSAC(
        "MlpPolicy",
        "CartPole-v1",
        learning_starts=1000,
        batch_size=64,
        policy_kwargs=dict(net_arch=[64, 64]),
        seed=0,
    )
    model.learn(15_000)
    eval_env = Monitor(gym.make("CartPole-v1"))
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    assert mean_return > 60
