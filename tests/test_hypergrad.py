"""Hypergradient estimators against exact answers (DESIGN.md section 2, verification ladder)."""

import numpy as np
import pytest
import torch

from birl.hypergrad import METHODS, hypergradient
from birl.losses import DemonstrationNLL, PreferenceLoss, SupervisedNLL, SyntheticLoss
from birl.tabular import TabularMDP, garnet
from conftest import central_differences, cosine, phi, rel_err


def make_losses(mdp, x_true):
    expert = mdp.soft_solve(x_true).pi
    r_true = mdp.reward(x_true)
    return {
        "demonstration": DemonstrationNLL.from_expert(mdp, expert),
        "synthetic": SyntheticLoss(),
        "preference": PreferenceLoss(r_true, horizon=2, beta=2.0),
        "preference_noiseless_h3": PreferenceLoss(r_true, horizon=3, beta=np.inf),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("loss_name", ["demonstration", "synthetic", "preference", "preference_noiseless_h3"])
def test_exact_matches_finite_differences(seed, loss_name):
    mdp = garnet(6, 3, 4, gamma=0.85, tau=0.6, seed=seed, branching=2)
    rng = np.random.default_rng(seed)
    x, x_true = rng.standard_normal(4), rng.standard_normal(4)
    loss = make_losses(mdp, x_true)[loss_name]
    exact = hypergradient(mdp, x, loss, "exact")
    assert rel_err(exact.grad, central_differences(mdp, loss, x)) < 1e-5
    assert exact.value == pytest.approx(phi(mdp, loss, x), rel=1e-8)


def test_exact_matches_finite_differences_supervised_horizon_one():
    # classification: 8 inputs, 3 classes, reward features of (input, class); gamma = 0
    rng = np.random.default_rng(0)
    P = np.full((8, 3, 8), 1.0 / 8)
    mdp = TabularMDP(P, rng.standard_normal((8, 3, 5)), gamma=0.0, tau=0.5)
    inputs = rng.integers(0, 8, 200)
    labels = rng.integers(0, 3, 200)
    loss = SupervisedNLL(inputs, labels, n_inputs=8, n_classes=3)
    x = rng.standard_normal(5)
    assert rel_err(hypergradient(mdp, x, loss).grad, central_differences(mdp, loss, x)) < 1e-5
    # the soft policy is the softmax classifier, so phi is the usual cross-entropy
    logits = mdp.reward(x) / mdp.tau
    ce = -np.mean(logits[inputs, labels] - np.log(np.exp(logits[inputs]).sum(1)))
    assert phi(mdp, loss, x) == pytest.approx(ce)
    with pytest.raises(ValueError, match="gamma=0"):
        hypergradient(garnet(8, 3, 5, gamma=0.5, seed=0), x, loss)


def test_exact_matches_finite_differences_with_neural_reward():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    base = garnet(5, 3, 1, gamma=0.8, tau=0.5, seed=4, branching=2)
    mdp = TabularMDP(base.P, net, gamma=0.8, tau=0.5)
    x = mdp.reward_fn.initial_x()
    expert = base.soft_solve(np.array([1.0])).pi
    for loss in (DemonstrationNLL.from_expert(mdp, expert), PreferenceLoss(base.reward(np.ones(1)), horizon=2)):
        assert rel_err(hypergradient(mdp, x, loss).grad, central_differences(mdp, loss, x)) < 1e-5


@pytest.mark.parametrize("loss_name", ["demonstration", "preference"])
def test_msobirl_w_iteration_converges_to_exact(small_garnet, loss_name):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(4)
    loss = make_losses(small_garnet, rng.standard_normal(4))[loss_name]
    exact = hypergradient(small_garnet, x, loss).grad
    errs = [rel_err(hypergradient(small_garnet, x, loss, "msobirl", n_iters=n).grad, exact) for n in (10, 100, 3000)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-6
    # warm starting from the previous w continues the iteration
    r1 = hypergradient(small_garnet, x, loss, "msobirl", n_iters=50)
    r2 = hypergradient(small_garnet, x, loss, "msobirl", n_iters=50, w0=r1.info["w"])
    r3 = hypergradient(small_garnet, x, loss, "msobirl", n_iters=100)
    np.testing.assert_allclose(r2.info["w"], r3.info["w"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss_name", ["demonstration", "preference"])
def test_branch_is_consistent_and_error_shrinks(small_garnet, loss_name):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(4)
    loss = make_losses(small_garnet, rng.standard_normal(4))[loss_name]
    exact = hypergradient(small_garnet, x, loss).grad

    def mean_err(n):
        return np.mean([rel_err(hypergradient(small_garnet, x, loss, "branch", n_samples=n, rng=s).grad, exact) for s in range(4)])

    small, large = mean_err(200), mean_err(12_800)
    # error ~ 1/sqrt(N): 64x the samples should cut it by ~8x; ask for 3x
    assert large < small / 3
    big = hypergradient(small_garnet, x, loss, "branch", n_samples=40_000, n_rollouts=2, rng=123).grad
    assert cosine(big, exact) >= 0.99


def _biased_setting():
    mdp = garnet(5, 2, 3, gamma=0.9, tau=0.5, seed=0, branching=2)
    rng = np.random.default_rng(0)
    x, x_true = rng.standard_normal(3), rng.standard_normal(3)
    return mdp, x, PreferenceLoss(mdp.reward(x_true), horizon=3, beta=1.0)


def test_same_trajectory_shortcut_is_biased():
    mdp, x, loss = _biased_setting()
    exact = hypergradient(mdp, x, loss).grad
    # exact expectation of the shortcut (all segment pairs enumerated): no Monte Carlo noise
    shortcut = hypergradient(mdp, x, loss, "same_trajectory").grad
    assert rel_err(shortcut, exact) > 0.2
    # its sampled version converges to that biased value, not to the hypergradient
    sampled = hypergradient(mdp, x, loss, "same_trajectory", n_samples=40_000, rng=0).grad
    assert rel_err(sampled, shortcut) < 0.05
    assert rel_err(sampled, exact) > 0.15
    # while the branch estimator, with the same number of segment pairs, is close to exact
    branch = hypergradient(mdp, x, loss, "branch", n_samples=40_000, rng=0).grad
    assert rel_err(branch, exact) < 0.05


def test_myopic_is_exact_without_discounting_and_biased_with_it():
    rng = np.random.default_rng(1)
    x, x_true = rng.standard_normal(4), rng.standard_normal(4)
    for gamma, expect_exact in ((0.0, True), (0.9, False)):
        mdp = garnet(8, 3, 4, gamma=gamma, tau=0.5, seed=1)
        loss = DemonstrationNLL.from_expert(mdp, mdp.soft_solve(x_true).pi)
        err = rel_err(hypergradient(mdp, x, loss, "myopic").grad, hypergradient(mdp, x, loss).grad)
        assert (err < 1e-10) if expect_exact else (err > 0.05)


def test_myopic_sampled_converges_to_its_expectation():
    mdp, x, loss = _biased_setting()
    expected = hypergradient(mdp, x, loss, "myopic").grad
    sampled = hypergradient(mdp, x, loss, "myopic", n_samples=200_000, rng=1).grad
    assert rel_err(sampled, expected) < 0.05


def test_branch_uses_the_given_policy_not_pi_star(small_garnet):
    """Solvers pass inexact policies: every method must honour ``pi=``."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(4)
    loss = make_losses(small_garnet, rng.standard_normal(4))["demonstration"]
    uniform = np.full((6, 3), 1 / 3)
    a = hypergradient(small_garnet, x, loss, "exact", pi=uniform).grad
    b = hypergradient(small_garnet, x, loss, "exact").grad
    assert rel_err(a, b) > 1e-3
    c = hypergradient(small_garnet, x, loss, "msobirl", pi=uniform, n_iters=5000).grad
    assert rel_err(c, a) < 1e-6


def test_every_method_runs(small_garnet):
    loss = make_losses(small_garnet, np.ones(4))["preference"]
    for method in METHODS:
        res = hypergradient(small_garnet, np.zeros(4), loss, method, rng=0, n_samples=50)
        assert res.grad.shape == (4,) and np.all(np.isfinite(res.grad)) and res.method == method


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"method": "nope"}, ValueError, "method must be one of"),
        ({"x": np.array([np.nan, 0, 0, 0])}, ValueError, "x contains NaN"),
        ({"x": np.zeros(3)}, ValueError, "x must have shape"),
        ({"method": "branch", "n_samples": 0}, ValueError, "n_samples"),
        ({"method": "msobirl", "xi": -1.0}, ValueError, "xi"),
        ({"loss": "demo"}, TypeError, "loss must be"),
        ({"loss": DemonstrationNLL(np.ones((2, 2)))}, ValueError, "weights must have shape"),
        ({"pi": np.ones((2, 2))}, ValueError, "pi must have shape"),
        ({"method": "same_trajectory", "loss": SyntheticLoss()}, ValueError, "trajectory loss"),
    ],
)
def test_bad_inputs(small_garnet, kwargs, error, match):
    args = dict(mdp=small_garnet, x=np.zeros(4), loss=make_losses(small_garnet, np.ones(4))["preference"], method="exact")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        hypergradient(**args)


def test_segment_enumeration_guard(small_garnet):
    loss = PreferenceLoss(np.zeros((6, 3)), horizon=12, max_segments=1000)
    with pytest.raises(ValueError, match="max_segments"):
        hypergradient(small_garnet, np.zeros(4), loss)
