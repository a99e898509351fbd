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
