"""Learned dynamics (birl.dynamics) and the shared rollout interface (birl.model_env)."""

import numpy as np
import pytest
import torch

from birl.dynamics import EnsembleConfig, GaussianEnsemble, TabularCounts
from birl.model_env import EnsembleDynamics, FunctionDynamics, ModelEnv, TabularDynamics, discounted_reward_sum
from birl.serialization import CorruptFileError
from birl.tabular import garnet

A_SYS = np.array([[0.9, 0.2], [-0.1, 0.95]])
B_SYS = np.array([[0.0], [0.5]])
NOISE = 0.01


def linear_data(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 2))
    a = rng.uniform(-1, 1, size=(n, 1))
    s2 = s @ A_SYS.T + a @ B_SYS.T + NOISE * rng.normal(size=(n, 2))
    return s, a, s2


def small_ensemble(**kw):
    return GaussianEnsemble(EnsembleConfig(obs_dim=2, act_dim=1, n_members=4, n_elites=2, hidden=(32, 32), **kw))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    model = small_ensemble()
    s, a, s2 = linear_data()
    return model, model.fit(s, a, s2, max_epochs=60, batch_size=64, seed=0, holdout_ratio=0.2)


def test_nll_decreases_and_linear_system_is_learned(fitted):
    model, result = fitted
    assert result.train_loss[-1] < result.train_loss[0] - 2.0  # NLL per member, nats
    s, a, _ = linear_data(500, seed=1)
    mean, var, p_term = model.predict(torch.tensor(s, dtype=torch.float32), torch.tensor(a, dtype=torch.float32))
    truth = s @ A_SYS.T + a @ B_SYS.T
    mse = float(((mean.numpy() - truth) ** 2).mean())
    assert mse < 1e-3  # vs a signal variance of about 1
    assert 0.3 * NOISE**2 < float(var.mean()) < 4 * NOISE**2  # predicted noise variance is calibrated
    assert max(result.final_mse) < 3 * NOISE**2  # held-out error close to the noise floor
    assert float(p_term.max()) < 0.1  # nothing ever terminated


def test_holdout_and_elites(fitted):
    model, result = fitted
    assert result.n_val == 300
    assert len(result.val_mse) == result.epochs and all(len(v) == 4 for v in result.val_mse)
    assert result.elites == list(np.argsort(result.final_mse)[:2])
    assert model.elites.tolist() == result.elites
    # each member's restored weights are its best held-out epoch (within the 1% improvement rule)
    best_seen = np.min(np.array(result.val_mse), axis=0)
    assert np.all(np.array(result.final_mse) <= best_seen * 1.0101 + 1e-12)


def test_max_updates_caps_a_refit_mid_epoch():
    s, a, s2 = linear_data(1000)
    torch.manual_seed(0)
    model = small_ensemble()
    # 800 training rows at batch 64: 13 updates per epoch, so a cap of 20 ends inside epoch 2
    capped = model.fit(s, a, s2, max_epochs=50, batch_size=64, seed=0, max_updates=20)
    assert capped.updates == 20 and capped.epochs == 2 and len(capped.val_mse) == 2
    free = model.fit(s, a, s2, max_epochs=3, batch_size=64, seed=0, patience=50)
    assert free.updates == 3 * 13 and free.epochs == 3
    with pytest.raises(ValueError, match="max_updates"):
        model.fit(s, a, s2, max_updates=0)


def test_save_load_round_trip_is_exact(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "dyn.pt")
    loaded = GaussianEnsemble.load(tmp_path / "dyn.pt")
    assert loaded.config == model.config
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    obs, act = torch.randn(64, 2), torch.rand(64, 1) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert all(torch.equal(x, y) for x, y in zip(model.sample(obs, act, g1), loaded.sample(obs, act, g2)))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptFileError):
        GaussianEnsemble.load(tmp_path / "bad.pt")


def test_termination_is_learned():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(1500, 2))
    a = rng.uniform(-1, 1, size=(1500, 1))
    s2 = s + 0.1 * a
    term = s2[:, 0] > 0.8
    model = small_ensemble()
    model.fit(s, a, s2, term, max_epochs=30, seed=0)
    s_t, a_t = torch.tensor(s[:500], dtype=torch.float32), torch.tensor(a[:500], dtype=torch.float32)
    _, done = model.sample(s_t, a_t, torch.Generator().manual_seed(0), deterministic=True)
    assert (done.numpy() == term[:500]).mean() > 0.9


def test_batched_rollouts_and_discounted_sums(fitted):
    model, _ = fitted
    env = ModelEnv(EnsembleDynamics(model), reward_fn=lambda o, a, n: -(n**2).sum(-1), seed=0)
    start = torch.randn(7, 2)
    policy = lambda o: torch.tanh(o[:, :1])  # noqa: E731
    ro = env.rollout(start, policy, horizon=5, first_actions=torch.zeros(7, 1))
    assert ro.obs.shape == (5, 7, 2) and ro.act.shape == (5, 7, 1) and ro.rewards.shape == (5, 7)
    assert torch.equal(ro.obs[0], start) and torch.equal(ro.act[0], torch.zeros(7, 1))
    assert torch.equal(ro.obs[1:], ro.next_obs[:-1])
    assert ro.alive.shape == (5, 7) and bool((ro.alive == 1).all())
    # the differentiable sum equals the rewards recorded at rollout time, discounted
    w = torch.tensor(1.0, requires_grad=True)
    total = discounted_reward_sum(ro, lambda o, a, n: -w * (n**2).sum(-1), gamma=0.9)
    expected = ((0.9 ** torch.arange(5.0))[:, None] * ro.rewards).sum(0)
    torch.testing.assert_close(total.detach(), expected)
    (g,) = torch.autograd.grad(total.sum(), w)
    torch.testing.assert_close(g, expected.sum())
    obs, act, nxt, rew, term = ro.flat()
    assert obs.shape == (35, 2) and rew.shape == (35,)


def test_same_rollout_code_for_true_tabular_and_learned_dynamics():
    mdp = garnet(5, 2, 3, gamma=0.9, seed=0, branching=3)
    counts = TabularCounts(5, 2)
    n = 20000
    s = torch.randint(0, 5, (n,))
    a = torch.randint(0, 2, (n,))
    true_env = ModelEnv(TabularDynamics(mdp.P), seed=0)
    true_env.reset(s)
    s2, _, term = true_env.step(a)
    assert not term.any()
    counts.update(s.numpy(), a.numpy(), s2.numpy())
    assert np.abs(counts.P() - mdp.P).max() < 0.05  # empirical frequencies of the true P
    ro = ModelEnv(TabularDynamics(counts.P()), seed=1).rollout(torch.zeros(4, dtype=torch.long), lambda o: torch.zeros_like(o), 3)
    assert ro.obs.shape == (3, 4)
    # a known simulator behind the same interface
    f = ModelEnv(FunctionDynamics(lambda o, a: o + a), reward_fn=lambda o, a, n: n.sum(-1))
    ro = f.rollout(torch.zeros(2, 1), lambda o: torch.ones_like(o), 4)
    torch.testing.assert_close(ro.rewards, torch.arange(1.0, 5.0)[:, None].expand(4, 2))


def test_tabular_counts_save_load_and_unseen_rows(tmp_path):
    c = TabularCounts(3, 2).update([0, 0, 1], [1, 1, 0], [2, 1, 0])
    P = c.P()
    np.testing.assert_allclose(P[0, 1], [0, 0.5, 0.5])
    np.testing.assert_allclose(P[2, 0], [1 / 3] * 3)  # unseen: uniform
    c.save(tmp_path / "c.pt")
    np.testing.assert_array_equal(TabularCounts.load(tmp_path / "c.pt").P(), P)
    with pytest.raises(ValueError, match="next_states"):
        c.update([0], [0], [3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_elites"):
        EnsembleConfig(obs_dim=2, act_dim=1, n_members=2, n_elites=3)
    with pytest.raises(ValueError, match="activation"):
        EnsembleConfig(obs_dim=2, act_dim=1, activation="gelu")
    with pytest.raises(TypeError, match="config"):
        GaussianEnsemble({"obs_dim": 2})
    model = small_ensemble()
    with pytest.raises(ValueError, match="act must have shape"):
        model(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="holdout_ratio"):
        model.fit(*linear_data(10), holdout_ratio=1.0)
    with pytest.raises(ValueError, match="finite"):
        s, a, s2 = linear_data(10)
        s[0, 0] = np.nan
        model.fit(s, a, s2)
    with pytest.raises(TypeError, match="dynamics"):
        ModelEnv(object())
    with pytest.raises(ValueError, match="horizon"):
        ModelEnv(TabularDynamics(np.ones((2, 1, 2)) / 2)).rollout(torch.zeros(1), lambda o: o, 0)
