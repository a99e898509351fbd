"""Joint demonstration + preference loss (AIHF, seed 002 slide "Extension") and the offline
preference loss: hypergradients against the parts and against finite differences."""

import numpy as np
import pytest

from birl.hypergrad import hypergradient
from birl.losses import DemonstrationNLL, FixedPreferenceLoss, JointLoss, PreferenceLoss, SyntheticLoss
from birl.solvers import SoBiRL
from birl.tabular import garnet
from conftest import central_differences, cosine, phi, rel_err


def setting(seed, lam=0.7, offline=False):
    mdp = garnet(6, 3, 4, gamma=0.85, tau=0.6, seed=seed, branching=2)
    rng = np.random.default_rng(seed)
    x, x_true = rng.standard_normal(4), rng.standard_normal(4)
    expert = mdp.soft_solve(x_true).pi
    r_true = mdp.reward(x_true)
    demo = DemonstrationNLL.from_samples(mdp, *mdp.sample_trajectories(expert, 20, 5, rng))
    if offline:
        uniform = np.full((6, 3), 1 / 3)
        pref = FixedPreferenceLoss.sample(mdp, uniform, r_true, n_pairs=40, horizon=2, rng=rng)
    else:
        pref = PreferenceLoss(r_true, horizon=2, beta=2.0)
    return mdp, x, demo, pref, JointLoss.demonstrations_and_preferences(demo, pref, lam=lam)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("offline", [False, True])
def test_exact_is_weighted_sum_of_parts_and_matches_finite_differences(seed, offline):
    lam = 0.7
    mdp, x, demo, pref, joint = setting(seed, lam, offline)
    g = hypergradient(mdp, x, joint, "exact")
    parts = hypergradient(mdp, x, demo, "exact").grad + lam * hypergradient(mdp, x, pref, "exact").grad
    np.testing.assert_allclose(g.grad, parts, rtol=1e-10, atol=1e-12)
    assert rel_err(g.grad, central_differences(mdp, joint, x)) < 1e-5
    assert g.value == pytest.approx(phi(mdp, demo, x) + lam * phi(mdp, pref, x), rel=1e-8)


def test_msobirl_converges_to_exact_on_joint_loss():
    mdp, x, _, _, joint = setting(3)
    exact = hypergradient(mdp, x, joint, "exact").grad
    assert rel_err(hypergradient(mdp, x, joint, "msobirl", n_iters=3000).grad, exact) < 1e-6


def test_myopic_and_branch_run_part_by_part():
    lam = 0.5
    mdp, x, demo, pref, joint = setting(4, lam)
    # exact-expectation myopic: linear in the loss
    myo = hypergradient(mdp, x, joint, "myopic").grad
    np.testing.assert_allclose(myo, hypergradient(mdp, x, demo, "myopic").grad + lam * hypergradient(mdp, x, pref, "myopic").grad,
                               rtol=1e-10, atol=1e-12)
    # branch: the parts draw in turn from one generator
    res = hypergradient(mdp, x, joint, "branch", n_samples=300, rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    pi = mdp.soft_solve(x).pi
    manual = hypergradient(mdp, x, demo, "branch", pi=pi, n_samples=300, rng=rng).grad
    manual = manual + lam * hypergradient(mdp, x, pref, "branch", pi=pi, n_samples=300, rng=rng).grad
    np.testing.assert_allclose(res.grad, manual, rtol=1e-12)
    assert len(res.info["parts"]) == 2
    # and it is consistent
    big = hypergradient(mdp, x, joint, "branch", n_samples=8000, rng=1).grad
    assert cosine(big, hypergradient(mdp, x, joint).grad) >= 0.98


def test_same_trajectory_needs_trajectory_parts():
    mdp, x, demo, pref, joint = setting(0)
    with pytest.raises(ValueError, match="trajectory loss"):
        hypergradient(mdp, x, joint, "same_trajectory")
    only_pref = JointLoss([pref, pref], [0.5, 0.5])
    a = hypergradient(mdp, x, only_pref, "same_trajectory").grad
    np.testing.assert_allclose(a, hypergradient(mdp, x, pref, "same_trajectory").grad, rtol=1e-10)


def test_zero_weight_part_is_ignored_and_three_parts_work():
    mdp, x, demo, pref, _ = setting(1)
    j = JointLoss([demo, pref, SyntheticLoss()], [1.0, 0.0, 2.0])
    expect = hypergradient(mdp, x, demo).grad + 2.0 * hypergradient(mdp, x, SyntheticLoss()).grad
    np.testing.assert_allclose(hypergradient(mdp, x, j).grad, expect, rtol=1e-10, atol=1e-12)
    assert rel_err(hypergradient(mdp, x, j, "branch", n_samples=20, rng=0).grad, expect) < 10  # runs


def test_fixed_preference_loss_depends_on_x_only():
    mdp, x, _, pref, _ = setting(2, offline=True)
    g = hypergradient(mdp, x, pref, "exact").grad
    uniform = np.full((6, 3), 1 / 3)
    # grad_pi f = 0: the hypergradient does not depend on the policy
    np.testing.assert_allclose(g, hypergradient(mdp, x, pref, "exact", pi=uniform).grad, rtol=1e-12)
    assert rel_err(g, central_differences(mdp, pref, x)) < 1e-5
    assert len(pref) == 40 and pref.states.shape == (40, 2, 2)
    assert 0.0 <= pref.accuracy(mdp, x) <= 1.0


def test_sobirl_descends_the_joint_objective():
    mdp, _, _, _, joint = setting(5)
    solver = SoBiRL(mdp, joint, np.zeros(4), lr=0.5, inner_steps=10)
    hist = solver.run(30)
    assert hist[-1]["phi"] < hist[0]["phi"] - 1e-3


@pytest.mark.parametrize(
    "args, error, match",
    [
        (([],), ValueError, "at least one"),
        ((["demo"],), TypeError, r"parts\[0\]"),
        (([SyntheticLoss()], [-1.0]), ValueError, "non-negative"),
        (([SyntheticLoss()], [0.0]), ValueError, "positive entry"),
        (([SyntheticLoss()], [1.0, 2.0]), ValueError, "one entry per part"),
        (([SyntheticLoss()], [np.nan]), ValueError, "finite"),
    ],
)
def test_joint_loss_validation(args, error, match):
    with pytest.raises(error, match=match):
        JointLoss(*args)


def test_lambda_and_fixed_preference_validation():
    with pytest.raises(ValueError, match="lam"):
        JointLoss.demonstrations_and_preferences(SyntheticLoss(), SyntheticLoss(), lam=-1.0)
    with pytest.raises(ValueError, match="labels"):
        FixedPreferenceLoss(np.zeros((3, 2, 2)), np.zeros((3, 2, 2)), [0.0, 2.0, 1.0])
    with pytest.raises(ValueError, match=r"\(n, 2, H\)"):
        FixedPreferenceLoss(np.zeros((3, 3, 2)), np.zeros((3, 3, 2)), [0.0, 1.0, 1.0])
    mdp = garnet(4, 2, 2, seed=0)
    bad = FixedPreferenceLoss(np.full((1, 2, 2), 9), np.zeros((1, 2, 2)), [1.0])
    with pytest.raises(ValueError, match="states must be"):
        hypergradient(mdp, np.zeros(2), JointLoss([bad]))
