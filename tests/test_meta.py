"""Meta-learned reward across a task family (seed 004, eqs. (11)-(12))."""

import numpy as np
import pytest

from birl.hypergrad import hypergradient
from birl.meta import (
    GarnetFamily,
    MetaObjective,
    Task,
    gridworld_tasks,
    meta_gradient_descent,
    normalised_return,
    optimal_return,
    true_return,
)
from birl.tabular import garnet
from conftest import rel_err


def small_family(**kw):
    opts = dict(n_states=6, n_actions=2, n_features=3, gamma=0.85, tau=0.6, branching=2, n_start=2, seed=3)
    opts.update(kw)
    return GarnetFamily(**opts)


def meta_fd(obj, x, eps=1e-5):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        fp = obj.value(x + e, policies=[t.mdp.soft_solve(x + e, tol=1e-13).pi for t in obj.tasks])
        fm = obj.value(x - e, policies=[t.mdp.soft_solve(x - e, tol=1e-13).pi for t in obj.tasks])
        g[i] = (fp - fm) / (2 * eps)
    return g


def test_family_shares_features_and_reward_but_not_kernels():
    fam = small_family()
    a, b = fam.tasks([0, 1])
    np.testing.assert_array_equal(a.mdp.features, b.mdp.features)
    np.testing.assert_array_equal(a.true_reward, b.true_reward)
    assert np.abs(a.mdp.P - b.mdp.P).max() > 0.1
    np.testing.assert_array_equal(fam.task(0).mdp.P, a.mdp.P)  # deterministic per index
    # realizable without hidden features
    np.testing.assert_allclose(a.mdp.reward(fam.x_true), a.true_reward)
    hidden = small_family(n_hidden=2)
    assert hidden.features.shape[-1] == 3 and hidden.x_true.shape == (5,)


@pytest.mark.parametrize("n_hidden", [0, 2])
def test_meta_hypergradient_matches_finite_differences(n_hidden):
    fam = small_family(n_hidden=n_hidden)
    obj = MetaObjective(fam.tasks(range(3)))
    x = np.random.default_rng(0).standard_normal(3)
    res = obj.hypergradient(x)
    assert rel_err(res.grad, meta_fd(obj, x)) < 1e-5
    assert res.value == pytest.approx(obj.value(x), rel=1e-8)
    # the mean of the per-task hypergradients
    per_task = [hypergradient(t.mdp, x, t.loss).grad for t in obj.tasks]
    np.testing.assert_allclose(res.grad, np.mean(per_task, axis=0), rtol=1e-10)
    # a minibatch is the mean over its tasks
    np.testing.assert_allclose(obj.hypergradient(x, tasks=[0, 2]).grad, (per_task[0] + per_task[2]) / 2, rtol=1e-10)


def test_meta_hypergradient_on_gridworld_slips():
    x_true = np.zeros(9)
    x_true[-1], x_true[4] = 1.0, -1.0
    start = np.zeros(9)
    start[0] = 1.0
    obj = MetaObjective(gridworld_tasks([0.0, 0.2, 0.4], x_true, size=3, start=start))
    x = np.random.default_rng(1).standard_normal(9) * 0.3
    assert rel_err(obj.hypergradient(x).grad, meta_fd(obj, x)) < 1e-5


def test_msobirl_meta_hypergradient_converges_to_exact():
    obj = MetaObjective(small_family().tasks(range(2)))
    x = np.random.default_rng(2).standard_normal(3)
    assert rel_err(obj.hypergradient(x, "msobirl", n_iters=3000).grad, obj.hypergradient(x).grad) < 1e-6


def test_gradient_descent_decreases_meta_objective():
    fam = GarnetFamily(n_states=10, n_actions=3, n_features=4, branching=3, n_start=2, seed=0)
    obj = MetaObjective(fam.tasks(range(4)))
    x0 = np.zeros(4)
    out = meta_gradient_descent(obj, x0, lr=1.0, n_steps=25)
    L = [obj.value(x) for x in out["xs"]]
    assert L[-1] < L[0] - 0.05
    assert np.all(np.diff(L) < 1e-9)  # monotone with this small step
    np.testing.assert_allclose(out["values"], L[:-1], rtol=1e-8)
    # stochastic task minibatches also make progress
    sgd = meta_gradient_descent(obj, x0, lr=1.0, n_steps=25, batch_size=2, seed=0)
    assert obj.value(sgd["x"]) < L[0] - 0.05


def test_partial_gradient_is_the_first_term_only():
    fam = small_family()
    obj = MetaObjective(fam.tasks(range(2)))
    x = np.random.default_rng(3).standard_normal(3)
    pis = [s.pi for s in obj.solve(x)]
    partial = obj.partial_gradient(x, pis)
    full = obj.hypergradient(x, policies=pis).grad
    assert rel_err(partial, full) > 1e-3  # the second term matters
    # with pi fixed, the partial gradient is the derivative of L(x, pi fixed)
    eps = 1e-6
    fd = np.array([(obj.value(x + eps * e, policies=pis) - obj.value(x - eps * e, policies=pis)) / (2 * eps) for e in np.eye(3)])
    assert rel_err(partial, fd) < 1e-6


def test_normalised_return_reference_points():
    mdp = garnet(8, 3, 4, gamma=0.9, tau=0.5, seed=0)
    r = mdp.reward(np.random.default_rng(0).standard_normal(4))
    uniform = np.full((8, 3), 1 / 3)
    assert normalised_return(mdp, uniform, r) == pytest.approx(0.0, abs=1e-12)
    # the greedy policy of the optimal Q reaches 1
    V = np.zeros(8)
    for _ in range(2000):
        V = (r + mdp.gamma * mdp.P @ V).max(1)
    Q_opt = r + mdp.gamma * mdp.P @ V
    greedy = np.eye(3)[Q_opt.argmax(1)]
    assert normalised_return(mdp, greedy, r) == pytest.approx(1.0, abs=1e-8)
    assert true_return(mdp, greedy, r) == pytest.approx(optimal_return(mdp, r), abs=1e-8)
    # a soft-optimal policy lies in between
    assert 0.0 < normalised_return(mdp, mdp.softmax_policy(Q_opt), r) < 1.0


def test_validation():
    fam = small_family()
    with pytest.raises(ValueError, match="at least one"):
        MetaObjective([])
    with pytest.raises(TypeError, match=r"tasks\[0\]"):
        MetaObjective(["task"])
    other = GarnetFamily(n_states=6, n_actions=2, n_features=4, n_start=2, seed=0).task(0)
    with pytest.raises(ValueError, match="same number of reward parameters"):
        MetaObjective([fam.task(0), other])
    obj = MetaObjective(fam.tasks(range(2)))
    with pytest.raises(ValueError, match="tasks must be indices"):
        obj.hypergradient(np.zeros(3), tasks=[5])
    with pytest.raises(ValueError, match="batch_size"):
        meta_gradient_descent(obj, np.zeros(3), batch_size=3)
    with pytest.raises(ValueError, match="n_hidden"):
        GarnetFamily(n_hidden=-1)
    with pytest.raises(ValueError, match="n_start"):
        GarnetFamily(n_states=5, n_start=6)
    assert isinstance(fam.task(1), Task)
