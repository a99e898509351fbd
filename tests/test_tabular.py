"""TabularMDP: soft Bellman solutions, occupancy measures, builders and input validation."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from birl.tabular import TabularMDP, garnet, gridworld, logsumexp_tau


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.95])
def test_value_iteration_and_policy_iteration_agree(gamma):
    mdp = garnet(30, 4, 5, gamma=gamma, tau=0.3, seed=0)
    x = np.random.default_rng(0).standard_normal(5)
    vi = mdp.soft_solve(x, method="value_iteration", tol=1e-11)
    pi_ = mdp.soft_solve(x, method="policy_iteration")
    np.testing.assert_allclose(vi.Q, pi_.Q, atol=1e-8)
    for sol in (vi, pi_):
        Q, V, pi = sol
        np.testing.assert_allclose(V, mdp.tau * np.log(np.exp(Q / mdp.tau).sum(1)), atol=1e-10)
        np.testing.assert_allclose(pi, np.exp((Q - V[:, None]) / mdp.tau), atol=1e-12)
        np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-12)
        assert sol.residual < 1e-8


def test_soft_optimal_policy_evaluates_to_its_own_value():
    mdp = garnet(20, 3, 4, gamma=0.9, tau=0.5, seed=2)
    x = np.ones(4)
    Q, V, pi = mdp.soft_solve(x)
    Qe, Ve = mdp.policy_evaluation(pi, x)
    np.testing.assert_allclose(Ve, V, atol=1e-8)
    np.testing.assert_allclose(Qe, Q, atol=1e-8)
    # soft optimality: any other policy has a lower soft value everywhere
    other = np.full_like(pi, 1.0 / mdp.n_actions)
    assert np.all(mdp.policy_evaluation(other, x)[1] <= V + 1e-9)


def test_occupancy_satisfies_flow_equation():
    mdp = garnet(15, 3, 2, gamma=0.8, tau=1.0, seed=3)
    pi = mdp.soft_solve(np.array([1.0, -1.0])).pi
    d = mdp.state_occupancy(pi)
    np.testing.assert_allclose(d, (1 - mdp.gamma) * mdp.rho + mdp.gamma * mdp.P_pi(pi).T @ d, atol=1e-12)
    np.testing.assert_allclose(mdp.occupancy(pi).sum(), 1.0)


def test_sampling_matches_transition_probabilities():
    mdp = garnet(4, 2, 1, seed=5, branching=3)
    rng = np.random.default_rng(0)
    s = np.full(200_000, 1)
    a = np.full(200_000, 0)
    freq = np.bincount(mdp.step_states(s, a, rng), minlength=4) / s.size
    np.testing.assert_allclose(freq, mdp.P[1, 0], atol=0.005)


def test_gridworld_and_garnet_builders():
    g = gridworld(4, slip=0.2)
    assert g.P.shape == (16, 4, 16) and g.n_params == 16
    np.testing.assert_allclose(g.P.sum(-1), 1.0)
    assert g.rho[0] == 1.0
    a, b = garnet(10, 3, 2, seed=7), garnet(10, 3, 2, seed=7)
    np.testing.assert_array_equal(a.P, b.P)
    np.testing.assert_array_equal(a.features, b.features)


def test_module_reward_is_accepted():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    P = garnet(3, 2, 1, seed=0).P
    mdp = TabularMDP(P, net, gamma=0.5, tau=1.0)
    assert mdp.n_params == 5 * 8 + 8 + 8 + 1
    assert mdp.reward(mdp.reward_fn.initial_x()).shape == (3, 2)


def _valid():
    return garnet(3, 2, 2, seed=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"P": np.ones((3, 2))}, "P must have shape"),
        ({"P": np.ones((3, 2, 3))}, "P must sum to 1"),
        ({"P": np.tile([1.5, -0.5, 0.0], (3, 2, 1))}, "P has negative"),
        ({"features": np.ones((3, 2))}, "features must have shape"),
        ({"features": np.ones((4, 2, 2))}, "features must describe a reward of shape"),
        ({"gamma": 1.0}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"tau": 0.0}, "tau"),
        ({"tau": -1.0}, "tau"),
        ({"rho": np.ones(3)}, "rho must sum to 1"),
        ({"rho": np.ones(2) / 2}, "rho must have shape"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, match):
    base = _valid()
    args = dict(P=base.P, features=base.features, gamma=0.9, tau=1.0, rho=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TabularMDP(**args)


@pytest.mark.parametrize("x, match", [(np.array([np.nan, 0.0]), "x contains NaN"), (np.zeros(3), "x must have shape")])
def test_bad_x(x, match):
    with pytest.raises(ValueError, match=match):
        _valid().soft_solve(x)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), gamma=st.floats(0.0, 0.99), tau=st.floats(0.05, 5.0))
def test_soft_bellman_is_a_gamma_contraction(seed, gamma, tau):
    mdp = garnet(6, 3, 2, gamma=gamma, tau=tau, seed=seed)
    rng = np.random.default_rng(seed)
    r = mdp.reward(rng.standard_normal(2))
    Q1, Q2 = rng.standard_normal((2, 6, 3)) * 5
    lhs = np.abs(mdp.soft_bellman(Q1, r) - mdp.soft_bellman(Q2, r)).max()
    assert lhs <= gamma * np.abs(Q1 - Q2).max() + 1e-9
    V = logsumexp_tau(Q1, tau)
    assert np.all(V >= Q1.max(1) - 1e-12)
    assert np.all(V <= Q1.max(1) + tau * np.log(3) + 1e-9)
    np.testing.assert_allclose(mdp.softmax_policy(Q1).sum(1), 1.0)
