"""Seed 001 case (a): classification as a horizon-1 soft policy with the reward as outer variable."""

import numpy as np
import pytest
import torch

from birl.world_model import (
    data_nll,
    evaluate,
    fit_bilevel,
    fit_cross_entropy,
    hypergradient,
    make_classification,
    solve_inner,
)


def test_aid_hypergradient_matches_finite_differences():
    data = make_classification(n_inputs=8, n_features=3, n_classes=3, n_train=40, seed=0)
    r = np.random.default_rng(1).standard_normal((8, 3))
    grad, _, theta = hypergradient(data, r, tau=0.7)
    Phi = torch.as_tensor(data.features)

    def phi(rr):
        return float(data_nll(solve_inner(data, rr, 0.7, theta), Phi, data.train_x, data.train_y))

    eps, fd = 1e-3, np.zeros_like(r)
    for idx in np.ndindex(*r.shape):
        e = np.zeros_like(r)
        e[idx] = eps
        fd[idx] = (phi(r + e) - phi(r - e)) / (2 * eps)
    assert np.linalg.norm(grad - fd) / np.linalg.norm(fd) < 1e-3


def test_tabular_classifier_inner_solution_is_softmax_of_reward():
    data = make_classification(n_inputs=6, n_classes=3, n_train=60, seed=0, tabular=True)
    r = np.random.default_rng(2).standard_normal((6, 3))
    theta = solve_inner(data, r, tau=0.5).numpy()
    seen = np.bincount(data.train_x, minlength=6) > 0
    p = np.exp(theta - theta.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(r / 0.5 - (r / 0.5).max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    np.testing.assert_allclose(p[seen], q[seen], atol=1e-5)


@pytest.mark.parametrize("tabular, steps, tol", [(True, 30, 2e-3), (False, 80, 5e-4)])
def test_bilevel_training_matches_cross_entropy_on_training_nll(tabular, steps, tol):
    """The bilevel optimum cannot beat maximum likelihood on the training NLL (the inner solutions
    range over the same classifier class) and should reach it; both are reported on test data."""
    data = make_classification(n_inputs=6, n_features=2, n_classes=3, n_train=60, seed=0, tabular=tabular)
    bilevel, ce = fit_bilevel(data, tau=1.0, outer_steps=steps, lr=0.5), fit_cross_entropy(data)
    b, c = evaluate(data, bilevel.theta), evaluate(data, ce.theta)
    assert bilevel.train_nll[-1] < bilevel.train_nll[0] - 0.1
    assert b["train_nll"] >= c["train_nll"] - 1e-6
    assert b["train_nll"] <= c["train_nll"] + tol
    assert np.isfinite(b["test_nll"]) and 0 <= b["test_acc"] <= 1


def test_bad_arguments():
    data = make_classification(n_inputs=4, n_classes=2, n_train=10, n_test=10, seed=0)
    with pytest.raises(ValueError, match="r must have shape"):
        solve_inner(data, np.zeros((3, 2)), 1.0)
    with pytest.raises(ValueError, match="tau"):
        solve_inner(data, np.zeros((4, 2)), 0.0)
    with pytest.raises(ValueError, match="train_y"):
        type(data)(data.features, 2, data.train_x, data.train_y + 5, data.test_x, data.test_y)


# --------------------------------------------------------------------------------------------
# Case (b): continuous world model as a horizon-1 soft policy over next states
# --------------------------------------------------------------------------------------------

import torch.nn.functional as F  # noqa: E402

from birl.world_model import SoftWorldModel, SoftWorldModelConfig, horizon1_surrogate  # noqa: E402


def _grid_problem():
    """A discretised 1-D next-state space: 4 contexts (s, a), 31 grid points s', a tanh-MLP reward
    r_x(s, a, s') with flat parameters x, and 40 data transitions; p*_x = softmax(r_x / tau) exactly."""
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(4, 2, generator=g, dtype=torch.float64)
    grid = torch.linspace(-2.0, 2.0, 31, dtype=torch.float64)
    data_c = torch.randint(0, 4, (40,), generator=g)
    data_k = torch.randint(0, 31, (40,), generator=g)
    x0 = 0.7 * torch.randn(3 * 6 + 6 + 6 + 1, generator=g, dtype=torch.float64)

    def reward(x):  # [4, 31]
        W, b, v, c = x[:18].reshape(3, 6), x[18:24], x[24:30], x[30]
        inp = torch.cat([ctx[:, None].expand(-1, 31, -1), grid[None, :, None].expand(4, -1, -1)], -1)
        return torch.tanh(inp @ W + b) @ v + c - 0.5 * grid**2

    return reward, x0, data_c, data_k


def test_horizon1_hypergradient_matches_finite_differences():
    """(3) with the exact expectation under p* = softmax(r/tau) equals central differences of
    phi(x) = -mean log p*_x(s'_data|s, a) (no Hessian anywhere)."""
    reward, x0, dc, dk = _grid_problem()
    tau = 0.6

    def phi(x):
        return float(-F.log_softmax(reward(x) / tau, -1)[dc, dk].mean())

    x = x0.clone().requires_grad_(True)
    r = reward(x)
    p_star = torch.softmax(r / tau, -1)
    (grad,) = torch.autograd.grad(horizon1_surrogate(r[dc, dk], r[dc], tau, p_star[dc]), x)
    eps, fd = 1e-6, torch.zeros_like(x0)
    for i in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[i] = eps
        fd[i] = (phi(x0 + e) - phi(x0 - e)) / (2 * eps)
    assert torch.linalg.norm(grad - fd) / torch.linalg.norm(fd) < 1e-6


def test_sampled_horizon1_hypergradient_converges_to_exact():
    """With next states drawn from p* instead of summed over the grid, (3) is unbiased."""
    reward, x0, dc, dk = _grid_problem()
    tau = 0.6
    x = x0.clone().requires_grad_(True)
    r = reward(x)
    p_star = torch.softmax(r / tau, -1)
    (exact,) = torch.autograd.grad(horizon1_surrogate(r[dc, dk], r[dc], tau, p_star[dc]), x, retain_graph=True)
    draws = torch.multinomial(p_star[dc].detach(), 4000, replacement=True, generator=torch.Generator().manual_seed(1))
    (sampled,) = torch.autograd.grad(horizon1_surrogate(r[dc, dk], torch.gather(r[dc], 1, draws), tau), x)
    assert F.cosine_similarity(exact, sampled, 0) > 0.99


def test_inner_level_recovers_the_gaussian_soft_optimum():
    """With a purely quadratic reward (B = 0) the inner optimum (1) is N(m, tau exp(-c)); the
    reparameterised sampler steps reach it."""
    torch.manual_seed(0)
    model = SoftWorldModel(SoftWorldModelConfig(2, 1, tau=0.5, hidden=(16,), residual_scale=0.0))
    with torch.no_grad():  # centre m = (0.8, -0.5), log precisions c = (1, -1) at every (s, a)
        model.centre[-1].weight.zero_()
        model.centre[-1].bias.copy_(torch.tensor([0.8, -0.5, 1.0, -1.0]))
    for p in model.reward_parameters():
        p.requires_grad_(False)
    u = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.sampler_parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for step in range(500):
        if step == 300:  # finish with a smaller step to shrink the sampling noise
            opt.param_groups[0]["lr"] = 1e-3
        loss = -model.inner_objective(u, n_samples=8, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        m, c = model.centre(u).chunk(2, -1)
        mu, log_std = model._sampler(u)
        target_std = torch.sqrt(0.5 * torch.exp(-c))
    err_mu, err_std = (mu - m).abs(), (torch.exp(log_std) / target_std - 1).abs()
    assert err_mu.mean() < 0.02 and err_mu.max() < 0.1  # target std of the first coordinate: 0.43
    assert err_std.mean() < 0.03 and err_std.max() < 0.1


@pytest.mark.parametrize("residual_scale", [0.0, 1.0])
def test_energy_density_is_normalised(residual_scale):
    """exp(energy_log_prob) integrates to one over s' (exact for B = 0, importance sampling for B > 0)."""
    torch.manual_seed(0)
    model = SoftWorldModel(SoftWorldModelConfig(1, 1, tau=1.0, hidden=(8,), residual_scale=residual_scale))
    with torch.no_grad():
        model.residual[-1].weight.mul_(20.0)  # a clearly non-Gaussian p*
    grid = torch.linspace(-8, 8, 801)[:, None]
    obs, act = torch.full_like(grid, 0.3), torch.full_like(grid, -0.2)
    logp = model.energy_log_prob(obs, act, grid, n_samples=4000, generator=torch.Generator().manual_seed(0))
    mass = float(torch.trapezoid(torch.exp(logp), grid[:, 0]))
    assert abs(mass - 1.0) < (1e-4 if residual_scale == 0 else 0.02)


def _linear_system(n, seed):
    rng = np.random.default_rng(seed)
    A, B = np.array([[0.9, 0.1], [-0.2, 0.8]]), np.array([[0.5], [0.1]])
    s, a = rng.standard_normal((n, 2)), rng.uniform(-1, 1, (n, 1))
    return s, a, s @ A.T + a @ B.T + 0.05 * rng.standard_normal((n, 2))


def test_soft_world_model_lowers_the_data_nll_on_a_linear_system():
    torch.manual_seed(0)
    train, val = _linear_system(1000, 0), _linear_system(500, 1)
    model = SoftWorldModel(SoftWorldModelConfig(2, 1, hidden=(32, 32)))
    model.set_normalizer(*(torch.as_tensor(v, dtype=torch.float32) for v in train))
    before = model.evaluate(*val)
    hist = model.fit(*train, iterations=300, batch_size=128, inner_steps=2, lr_reward=1e-3, eval_every=100, val_data=val, seed=0)
    after = model.evaluate(*val, energy_samples=64)
    assert hist.iterations == [100, 200, 300] and len(hist.val_nll) == 3
    assert after["nll"] < before["nll"] - 2.0  # exact optimum: -3.15 nats (noise std 0.05, 2 dims)
    assert after["mse"] < 0.5 * before["mse"]
    assert np.isfinite(after["energy_nll"]) and after["energy_nll"] < before["nll"]


def test_soft_world_model_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SoftWorldModel(SoftWorldModelConfig(2, 1, tau=0.7, hidden=(8, 8), residual_scale=0.5))
    model.fit(*_linear_system(100, 0), iterations=5, batch_size=32, seed=0)
    model.save(tmp_path / "wm.pt")
    loaded = SoftWorldModel.load(tmp_path / "wm.pt")
    assert loaded.config == model.config
    s, a, s2 = (torch.as_tensor(v, dtype=torch.float32) for v in _linear_system(20, 1))
    for fn in ("reward", "log_prob"):
        torch.testing.assert_close(getattr(loaded, fn)(s, a, s2), getattr(model, fn)(s, a, s2))
    torch.testing.assert_close(loaded.sample(s, a, torch.Generator().manual_seed(3)), model.sample(s, a, torch.Generator().manual_seed(3)))
    from birl.dynamics import EnsembleConfig, GaussianEnsemble

    GaussianEnsemble(EnsembleConfig(2, 1, n_members=1, n_elites=1, hidden=(4,))).save(tmp_path / "ens.pt")
    with pytest.raises(TypeError, match="holds a 'GaussianEnsemble'"):
        SoftWorldModel.load(tmp_path / "ens.pt")


def test_soft_world_model_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        SoftWorldModelConfig(2, 1, tau=0.0)
    with pytest.raises(ValueError, match="hidden"):
        SoftWorldModelConfig(2, 1, hidden=())
    with pytest.raises(ValueError, match="activation"):
        SoftWorldModelConfig(2, 1, activation="gelu")
    with pytest.raises(ValueError, match="residual_scale"):
        SoftWorldModelConfig(2, 1, residual_scale=-1.0)
    with pytest.raises(ValueError, match="obs_dim"):
        SoftWorldModelConfig(0, 1)
    with pytest.raises(ValueError, match="min_log_std"):
        SoftWorldModelConfig(2, 1, min_log_std=1.0, max_log_std=0.0)
    with pytest.raises(TypeError, match="config"):
        SoftWorldModel({"obs_dim": 2})
    model = SoftWorldModel(SoftWorldModelConfig(2, 1, hidden=(4,)))
    s, a, s2 = _linear_system(10, 0)
    with pytest.raises(ValueError, match="next_obs must have shape"):
        model.fit(s, a, s2[:, :1])
    with pytest.raises(ValueError, match="act must have shape"):
        model.fit(s, a[:5], s2)
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="obs must be finite"):
        model.fit(bad, a, s2)
    with pytest.raises(ValueError, match="iterations"):
        model.fit(s, a, s2, iterations=0)
    with pytest.raises(ValueError, match="lr_reward"):
        model.fit(s, a, s2, lr_reward=-1.0)
    with pytest.raises(ValueError, match="val_data"):
        model.fit(s, a, s2, val_data=(s, a))
    with pytest.raises(ValueError, match="obs must have shape"):
        model.predict(torch.zeros(3, 5), torch.zeros(3, 1))
    with pytest.raises(TypeError, match="obs must be a torch.Tensor"):
        model.sample(np.zeros((3, 2)), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="tau"):
        horizon1_surrogate(torch.zeros(3), torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="r_model"):
        horizon1_surrogate(torch.zeros(3), torch.zeros(4, 2), 1.0)
