"""Tests of the tabular outer loops in :mod:`birl.solvers` (fast: small garnet, few steps)."""

import numpy as np
import pytest
import torch

from birl.hypergrad import hypergradient
from birl.losses import DemonstrationNLL, PreferenceLoss
from birl.solvers import (
    DRLHF,
    HPGD,
    PBRL,
    GradientDescent,
    MSoBiRL,
    SoBiRL,
    StocSoBiRL,
    Storm,
    least_squares_w,
    policy_distance,
    storm_schedule,
)
from birl.tabular import garnet

SOLVERS = (SoBiRL, MSoBiRL, StocSoBiRL, HPGD, DRLHF, PBRL)


@pytest.fixture(scope="module")
def problem():
    """Garnet S=10, A=3, d=4 and an expert pi*(x_true); DemonstrationNLL from its occupancy."""
    mdp = garnet(10, 3, 4, gamma=0.8, tau=1.0, seed=3)
    x_true = np.random.default_rng(4).standard_normal(4)
    expert = mdp.soft_solve(x_true).pi
    loss = DemonstrationNLL.from_expert(mdp, expert)
    return mdp, x_true, expert, loss, loss(mdp, x_true, expert)


@pytest.fixture(scope="module")
def preference(problem):
    mdp, x_true = problem[0], problem[1]
    start = np.zeros(mdp.n_states)
    start[0] = 1.0
    return PreferenceLoss(mdp.reward(x_true), horizon=2, start=start)


def _x0(mdp):
    return np.zeros(mdp.n_params)


def _phis(history):
    return np.array([r["phi"] for r in history])


def _assert_progress(history, phi_star, fraction):
    """phi closed at least ``fraction`` of the gap between phi(x0) and phi(x_true)."""
    phi = _phis(history)
    assert phi[-1] <= phi[0] - fraction * (phi[0] - phi_star), phi[[0, -1]]


# ------------------------------------------------------------------ deterministic solvers
def test_sobirl_and_msobirl_decrease_phi_and_agree(problem):
    mdp, x_true, expert, loss, phi_star = problem
    sob = SoBiRL(mdp, loss, _x0(mdp), lr=1.0, inner_steps=10).run(60, expert_pi=expert)
    msob = MSoBiRL(mdp, loss, _x0(mdp), lr=0.5, inner_steps=10).run(60, expert_pi=expert)
    _assert_progress(sob, phi_star, 0.95)
    _assert_progress(msob, phi_star, 0.95)
    x_s, x_m = sob[-1]["x"], msob[-1]["x"]
    assert np.linalg.norm(x_m - x_s) <= 0.1 * np.linalg.norm(x_s)
    assert sob[-1]["policy_distance"] < sob[0]["policy_distance"]


def test_pbrl_decreases_phi(problem):
    mdp, _, expert, loss, phi_star = problem
    history = PBRL(mdp, loss, _x0(mdp), lr=0.5, inner_steps=10).run(40, expert_pi=expert)
    _assert_progress(history, phi_star, 0.9)
    assert history[-1]["hypergrad_evals"] == 0


def test_pbrl_soft_value_matches_policy_evaluation(problem):
    mdp, x_true, _, loss, _ = problem
    solver = PBRL(mdp, loss, _x0(mdp))
    pi = np.random.default_rng(0).dirichlet(np.ones(mdp.n_actions), size=mdp.n_states)
    r = mdp.reward(x_true)
    V = solver.soft_value(torch.as_tensor(pi), torch.as_tensor(r))
    assert float(V) == pytest.approx(mdp.rho @ mdp.policy_evaluation(pi, r=r)[1], rel=1e-10)


def test_drlhf_on_preferences_moves_and_decreases_the_direct_part(problem, preference):
    mdp = problem[0]
    solver = DRLHF(mdp, preference, _x0(mdp), lr=0.5, inner_steps=10)
    for _ in range(10):
        x_before, pi_before = solver.x.copy(), solver.pi.copy()
        solver.step()
        # the x step minimises f(., pi_k) with pi_k held fixed
        assert preference(mdp, solver.x, pi_before) < preference(mdp, x_before, pi_before)
    assert np.linalg.norm(solver.x) > 0.1
    assert solver.hypergrad_evals == 0


def test_drlhf_does_not_move_on_a_pure_policy_loss(problem):
    mdp, _, _, loss, _ = problem
    history = DRLHF(mdp, loss, _x0(mdp), lr=1.0).run(5)
    assert np.array_equal(history[-1]["x"], _x0(mdp))


# ------------------------------------------------------------------ stochastic solvers
def test_stoc_sobirl_decreases_phi(problem):
    mdp, _, expert, loss, phi_star = problem
    history = StocSoBiRL(mdp, loss, _x0(mdp), lr=0.3, n_samples=64, seed=0).run(30, expert_pi=expert)
    _assert_progress(history, phi_star, 0.7)
    assert history[-1]["hypergrad_evals"] == 2 * 30 - 1  # STORM: two calls per step after the first


def test_hpgd_decreases_phi_on_average(problem):
    mdp, _, _, loss, phi_star = problem
    phi = _phis(HPGD(mdp, loss, _x0(mdp), lr=1.0, seed=0).run(40))
    assert phi[-10:].mean() <= phi[0] - 0.7 * (phi[0] - phi_star)


def test_sobirl_branch_option_runs(problem):
    mdp, _, _, loss, _ = problem
    history = SoBiRL(mdp, loss, _x0(mdp), lr=0.3, method="branch", n_samples=32, seed=1).run(3)
    assert history[-1]["hypergrad_evals"] == 3 and np.all(np.isfinite(history[-1]["x"]))


def test_seed_makes_stochastic_runs_reproducible(problem):
    mdp, _, _, loss, _ = problem
    runs = [StocSoBiRL(mdp, loss, _x0(mdp), lr=0.3, n_samples=16, seed=7).run(4)[-1]["x"] for _ in range(2)]
    np.testing.assert_array_equal(*runs)


# ------------------------------------------------------------------ STORM
def test_storm_with_a_noise_free_oracle_is_gradient_descent():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    b = np.array([1.0, -1.0])

    def oracle(point, seed):
        return A @ point[0] - b

    for storm in (Storm(mu=0.3), Storm(mu=storm_schedule(0.5))):
        x_storm = x_gd = np.array([2.0, -3.0])
        for k in range(20):
            x_storm = x_storm - 0.2 * storm.direction((x_storm, None), oracle, seed=k)
            x_gd = x_gd - 0.2 * GradientDescent().direction((x_gd, None), oracle, seed=k)
            np.testing.assert_allclose(x_storm, x_gd, rtol=1e-12, atol=1e-12)


def test_storm_inside_sobirl_with_exact_estimator_matches_plain_sobirl(problem):
    mdp, _, _, loss, _ = problem
    plain = SoBiRL(mdp, loss, _x0(mdp), lr=0.5).run(8)
    storm = SoBiRL(mdp, loss, _x0(mdp), lr=0.5, optimizer=Storm(mu=0.2)).run(8)
    np.testing.assert_allclose(storm[-1]["x"], plain[-1]["x"], rtol=1e-9, atol=1e-12)


def test_storm_uses_common_random_numbers_at_the_previous_point():
    calls = []

    def oracle(point, seed):
        calls.append((point[0].copy(), seed))
        return point[0] + seed  # a noisy oracle: the seed is the noise

    storm = Storm(mu=0.25)
    x1, x2 = np.array([1.0]), np.array([0.5])
    h1 = storm.direction((x1, None), oracle, seed=10)
    h2 = storm.direction((x2, None), oracle, seed=20)
    assert [s for _, s in calls] == [10, 20, 20]
    np.testing.assert_array_equal(calls[2][0], x1)
    np.testing.assert_allclose(h2, (x2 + 20) + 0.75 * (h1 - (x1 + 20)))


# ------------------------------------------------------------------ M-SoBiRL details
def test_msobirl_w_step_is_the_slide_update(problem):
    mdp, _, _, loss, _ = problem
    solver = MSoBiRL(mdp, loss, _x0(mdp), lr=0.5, w0="zeros", xi=0.2)
    pi = solver.pi
    A = (np.eye(mdp.n_states) - mdp.gamma * mdp.P_pi(pi)).T
    C = -loss.weights  # diag(pi) grad_pi f for -sum w log pi
    b = C.sum(1) - mdp.gamma * np.einsum("sa,sat->t", C, mdp.P)
    solver.step()
    np.testing.assert_allclose(solver.w, -0.2 * (-A.T @ b), rtol=1e-12)


def test_least_squares_w_is_the_fixed_point_of_the_w_iteration(problem):
    mdp, x_true, _, loss, _ = problem
    pi = mdp.soft_solve(0.5 * x_true).pi
    w = least_squares_w(mdp, loss, 0.5 * x_true, pi)
    converged = hypergradient(mdp, 0.5 * x_true, loss, "msobirl", pi=pi, w0=w, n_iters=5)
    np.testing.assert_allclose(converged.info["w"], w, atol=1e-12)


# ------------------------------------------------------------------ shared machinery
def test_inner_level_is_warm_started_soft_bellman(problem):
    mdp, _, _, loss, _ = problem
    solver = SoBiRL(mdp, loss, _x0(mdp), lr=0.5, inner_steps=3)
    Q = solver.Q.copy()
    solver.step()
    r = mdp.reward(solver.x)
    for _ in range(3):
        Q = mdp.soft_bellman(Q, r)
    np.testing.assert_allclose(solver.Q, Q)
    np.testing.assert_allclose(solver.pi, mdp.softmax_policy(Q))


def test_history_records(problem):
    mdp, _, expert, loss, _ = problem
    history = SoBiRL(mdp, loss, _x0(mdp), lr=0.5).run(4, expert_pi=expert)
    assert len(history) == 5 and [r["step"] for r in history] == list(range(5))
    assert [r["hypergrad_evals"] for r in history] == list(range(5))
    times = [r["wall_time"] for r in history]
    assert all(b >= a for a, b in zip(times, times[1:]))
    assert all(0.0 <= r["policy_distance"] <= 1.0 for r in history)
    assert SoBiRL(mdp, loss, _x0(mdp)).run(1)[-1]["policy_distance"] is None


def test_callback_can_stop_a_run(problem):
    mdp, _, _, loss, _ = problem
    history = SoBiRL(mdp, loss, _x0(mdp)).run(10, callback=lambda solver, record: record["step"] < 2)
    assert len(history) == 3


def test_policy_distance():
    pi = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert policy_distance(pi, pi) == 0.0
    assert policy_distance(pi, pi[:, ::-1]) == pytest.approx(0.5)  # TV 1 in state 0, 0 in state 1
    assert policy_distance(pi, pi[:, ::-1], weights=np.array([0.0, 1.0])) == 0.0


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("cls", SOLVERS)
@pytest.mark.parametrize("kwargs, name", [({"lr": 0.0}, "lr"), ({"lr": -1.0}, "lr"), ({"inner_steps": 0}, "inner_steps")])
def test_bad_arguments_raise_value_error_naming_them(problem, cls, kwargs, name):
    mdp, _, _, loss, _ = problem
    with pytest.raises(ValueError, match=name):
        cls(mdp, loss, _x0(mdp), **kwargs)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda m, l: SoBiRL(m, l, np.zeros(3)), "x0"),
        (lambda m, l: SoBiRL(m, l, np.zeros(4), method="msobirl"), "method"),
        (lambda m, l: SoBiRL(m, l, np.zeros(4), lr_schedule="cosine"), "lr_schedule"),
        (lambda m, l: MSoBiRL(m, l, np.zeros(4), w0=np.zeros(3)), "w0"),
        (lambda m, l: MSoBiRL(m, l, np.zeros(4), xi=0.0), "xi"),
        (lambda m, l: PBRL(m, l, np.zeros(4), lam=-1.0), "lam"),
        (lambda m, l: StocSoBiRL(m, l, np.zeros(4), mu=1.5), "mu"),
        (lambda m, l: SoBiRL(m, l, np.zeros(4)).run(-1), "n_outer"),
        (lambda m, l: SoBiRL(m, l, np.zeros(4)).run(1, expert_pi=np.ones((2, 2))), "expert_pi"),
    ],
)
def test_more_bad_arguments(problem, build, name):
    mdp, _, _, loss, _ = problem
    with pytest.raises(ValueError, match=name):
        build(mdp, loss)
