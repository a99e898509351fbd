"""Property-based tests (hypothesis): the soft Bellman operator and the preference dataset.

Soft Bellman (DESIGN.md section 1): on random small tabular MDPs (random ``S``, ``A``, sparse
random ``P``, ``gamma``, ``tau`` and reward scale) the operator
``T(Q)(s,a) = r(s,a) + gamma * E_{s'} V_Q(s')`` with ``V_Q = tau * logsumexp(Q / tau)`` is a
``gamma``-contraction in the sup norm, monotone and shift-equivariant; the soft value lies
between ``max_a Q`` and ``max_a Q + tau log|A|``; the soft-greedy policy is a distribution; and
``soft_solve`` returns a fixed point of ``T`` (both methods).

Preference dataset: random sequences of ``add`` calls (with keep masks, any capacity and policy)
are compared with a plain Python model of what must be kept; save/load round-trips exactly;
bad inputs raise errors naming the argument.

Example counts are kept small (``max_examples`` 25-50, ``deadline=None``) so that the file
runs in a few seconds.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from birl.feedback import PreferenceDataset, SegmentBatch
from birl.tabular import TabularMDP, logsumexp_tau

# ----------------------------------------------------------------------------- soft Bellman

#: finite Q entries, large enough to stress the stable logsumexp at small tau
Q_ENTRIES = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def tabular_mdps(draw, max_states: int = 6, max_actions: int = 4):
    """A random soft MDP with a reward table ``R`` as its single linear feature (``x = [1]``)."""
    S = draw(st.integers(1, max_states))
    A = draw(st.integers(1, max_actions))
    gamma = draw(st.floats(0.0, 0.99))
    tau = draw(st.floats(0.01, 10.0))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    rng = np.random.default_rng(seed)
    # sparse transitions: each (s, a) reaches a random non-empty subset of states
    support = rng.random((S, A, S)) < draw(st.floats(0.2, 1.0))
    support[np.arange(S)[:, None], np.arange(A)[None, :], rng.integers(0, S, (S, A))] = True
    P = np.where(support, rng.random((S, A, S)) + 1e-3, 0.0)
    P /= P.sum(-1, keepdims=True)
    R = rng.standard_normal((S, A)) * scale
    return TabularMDP(P, R[..., None], gamma=gamma, tau=tau), R


def q_tables(S: int, A: int):
    return hnp.arrays(np.float64, (S, A), elements=Q_ENTRIES)


def sup(a: np.ndarray) -> float:
    return float(np.abs(a).max())


def policy_tol(Q: np.ndarray, tau: float) -> float:
    """Floating-point floor of ``sum_a exp((Q - V) / tau) = 1``: ``Q - V`` is rounded at the scale
    of ``|Q|``, an error that ``/ tau`` amplifies (about ``eps * |Q| / tau``)."""
    return 1e-12 + 1e-14 * sup(Q) / tau


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_soft_bellman_is_a_monotone_gamma_contraction(data):
    mdp, R = data.draw(tabular_mdps())
    S, A = R.shape
    Q1, Q2 = data.draw(q_tables(S, A)), data.draw(q_tables(S, A))
    T1, T2 = mdp.soft_bellman(Q1, R), mdp.soft_bellman(Q2, R)
    tol = 1e-12 * (1.0 + sup(Q1) + sup(Q2) + sup(R))
    assert sup(T1 - T2) <= mdp.gamma * sup(Q1 - Q2) + tol
    # monotone: Q1 <= max(Q1, Q2) entrywise implies T(Q1) <= T(max(Q1, Q2))
    assert np.all(T1 <= mdp.soft_bellman(np.maximum(Q1, Q2), R) + tol)
    # shift-equivariant: T(Q + c) = T(Q) + gamma c
    c = data.draw(st.floats(-100.0, 100.0))
    np.testing.assert_allclose(mdp.soft_bellman(Q1 + c, R), T1 + mdp.gamma * c, rtol=0, atol=1e-9 * (1 + sup(Q1) + abs(c) + sup(R)))


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_soft_value_bounds_and_soft_greedy_policy(data):
    mdp, R = data.draw(tabular_mdps())
    S, A = R.shape
    Q = data.draw(q_tables(S, A))
    V = logsumexp_tau(Q, mdp.tau)
    tol = 1e-12 * (1.0 + sup(Q))
    assert V.shape == (S,) and np.all(np.isfinite(V))
    assert np.all(Q.max(1) <= V + tol)
    assert np.all(V <= Q.max(1) + mdp.tau * np.log(A) + tol + 1e-12 * mdp.tau)
    pi = mdp.softmax_policy(Q)
    assert pi.shape == (S, A) and np.all(pi >= 0.0)
    np.testing.assert_allclose(pi.sum(1), 1.0, rtol=0, atol=policy_tol(Q, mdp.tau))
    # the greedy action keeps the largest probability
    assert np.all(pi[np.arange(S), Q.argmax(1)] >= pi.max(1) - policy_tol(Q, mdp.tau))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), method=st.sampled_from(["policy_iteration", "value_iteration"]))
def test_soft_solve_returns_the_fixed_point(data, method):
    mdp, R = data.draw(tabular_mdps())
    A = R.shape[1]
    sol = mdp.soft_solve(np.ones(1), method=method, tol=1e-10)
    Q, V, pi = sol
    scale = 1.0 + sup(Q)
    assert sup(mdp.soft_bellman(Q, R) - Q) <= 1e-8 * scale
    assert sol.residual <= 1e-8 * scale
    np.testing.assert_allclose(V, logsumexp_tau(Q, mdp.tau), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(pi.sum(1), 1.0, rtol=0, atol=policy_tol(Q, mdp.tau))
    assert np.all(pi >= 0.0)
    # the soft value of the soft-optimal policy lies between the extreme discounted returns
    lo, hi = R.min() / (1 - mdp.gamma), (R.max() + mdp.tau * np.log(A)) / (1 - mdp.gamma)
    assert np.all(V >= lo - 1e-8 * scale) and np.all(V <= hi + 1e-8 * scale)
    # and soft policy evaluation of pi* gives back (Q*, V*)
    Qe, Ve = mdp.policy_evaluation(pi, r=R)
    np.testing.assert_allclose(Ve, V, rtol=0, atol=1e-7 * scale)
    np.testing.assert_allclose(Qe, Q, rtol=0, atol=1e-7 * scale)


# ------------------------------------------------------------------------ preference dataset
OBS_DIM, ACT_DIM = 2, 1


def make_batch(ids: np.ndarray, horizon: int, side: int) -> SegmentBatch:
    """Segments whose contents encode a global pair id (``starts``) so that order is checkable."""
    n = len(ids)
    base = ids[:, None, None].astype(np.float32) + 0.25 * side
    return SegmentBatch(
        obs=np.broadcast_to(base, (n, horizon, OBS_DIM)).copy(),
        acts=np.broadcast_to(-base, (n, horizon, ACT_DIM)).copy(),
        true_rewards=np.broadcast_to(ids[:, None] * 10.0 + side, (n, horizon)).copy(),
        starts=ids,
        episode_ids=ids % 7,
    )


LABELS = st.sampled_from([0.0, 0.5, 1.0])


@st.composite
def add_calls(draw):
    """A list of ``(n, labels, keep)`` for successive ``add`` calls."""
    calls = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, 7))
        labels = draw(st.lists(LABELS, min_size=n, max_size=n))
        keep = draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n))
        calls.append((n, np.array(labels), None if keep is None else np.array(keep, dtype=bool)))
    return calls


def expected_after(calls, capacity, policy):
    """Reference model: the ``(id, label)`` pairs a dataset must hold, in logical order."""
    kept, next_id, rejected = [], 0, 0
    for n, labels, keep in calls:
        ids = np.arange(next_id, next_id + n)
        next_id += n
        mask = np.ones(n, bool) if keep is None else keep
        for i, y in zip(ids[mask], labels[mask]):
            if capacity is not None and policy == "reject" and len(kept) >= capacity:
                rejected += 1
                continue
            kept.append((int(i), float(y)))
            if capacity is not None and policy == "fifo" and len(kept) > capacity:
                kept.pop(0)
    return kept, rejected


def assert_pairs(ds: PreferenceDataset, kept, horizon: int) -> None:
    assert len(ds) == len(kept)
    if not kept:
        assert ds.labels.shape == (0,)
        return
    ids = np.array([i for i, _ in kept])
    labels = np.array([y for _, y in kept], np.float32)
    seg1, seg2, y = ds[:]
    np.testing.assert_array_equal(seg1.starts, ids)
    np.testing.assert_array_equal(seg2.starts, ids)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(ds.labels, labels)
    assert np.all((ds.labels >= 0) & (ds.labels <= 1))
    ref1, ref2 = make_batch(ids, horizon, 1), make_batch(ids, horizon, 2)
    for field in ("obs", "acts", "true_rewards", "episode_ids"):
        np.testing.assert_array_equal(getattr(seg1, field), getattr(ref1, field))
        np.testing.assert_array_equal(getattr(seg2, field), getattr(ref2, field))
    assert seg1.obs.shape == (len(kept), horizon, OBS_DIM) and seg1.acts.shape == (len(kept), horizon, ACT_DIM)
    assert seg1.true_rewards.shape == (len(kept), horizon) and y.shape == (len(kept),)
    # integer indexing, also negative, picks single pairs in the same logical order
    for k in {0, len(kept) - 1, -1}:
        s1, s2, yk = ds[k]
        assert int(s1.starts[0]) == kept[k][0] and int(s2.starts[0]) == kept[k][0] and float(yk[0]) == kept[k][1]


_example_counter = itertools.count()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    calls=add_calls(),
    capacity=st.none() | st.integers(1, 12),
    policy=st.sampled_from(["fifo", "reject"]),
    horizon=st.integers(1, 4),
)
def test_preference_dataset_matches_a_reference_model(tmp_path_factory, calls, capacity, policy, horizon):
    ds = PreferenceDataset(capacity=capacity, policy=policy)
    next_id, done = 0, []
    for n, labels, keep in calls:
        ids = np.arange(next_id, next_id + n)
        next_id += n
        stored = ds.add(make_batch(ids, horizon, 1), make_batch(ids, horizon, 2), labels, keep=keep)
        kept_before = len(expected_after(done, capacity, policy)[0])
        done.append((n, labels, keep))
        kept, rejected = expected_after(done, capacity, policy)
        n_kept = int(n if keep is None else keep.sum())
        assert 0 <= stored <= n_kept
        if capacity is None:
            assert stored == n_kept
        elif policy == "reject":
            assert stored == len(kept) - kept_before
        else:  # fifo: pairs of this batch beyond the capacity are evicted at once, never stored
            assert stored == min(n_kept, capacity)
        assert len(ds) == len(kept) <= (capacity if capacity is not None else np.inf)
    assert_pairs(ds, kept, horizon)
    total_kept = sum(int(n if keep is None else keep.sum()) for n, _, keep in calls)
    assert ds.n_evicted == (total_kept - len(ds) if policy == "fifo" else 0)
    assert ds.n_rejected == rejected
    assert ds.n_added == (total_kept if policy == "fifo" else len(ds))

    path = tmp_path_factory.getbasetemp() / f"prefs_{next(_example_counter)}.npz"
    ds.save(path)
    loaded = PreferenceDataset.load(path)
    path.unlink()
    assert (loaded.capacity, loaded.policy, len(loaded)) == (ds.capacity, ds.policy, len(ds))
    assert (loaded.n_added, loaded.n_evicted, loaded.n_rejected) == (ds.n_added, ds.n_evicted, ds.n_rejected)
    a, b = ds.arrays(), loaded.arrays()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert_pairs(loaded, kept, horizon)
    # a loaded dataset keeps following the same capacity policy
    ids = np.arange(next_id, next_id + 3)
    loaded.add(make_batch(ids, horizon, 1), make_batch(ids, horizon, 2), np.ones(3))
    assert_pairs(loaded, expected_after(calls + [(3, np.ones(3), None)], capacity, policy)[0], horizon)


BAD_LABELS = st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v not in (0.0, 0.5, 1.0))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5), bad=BAD_LABELS, where=st.data())
def test_bad_labels_raise_naming_labels(n, bad, where):
    ids = np.arange(n)
    labels = np.ones(n)
    labels[where.draw(st.integers(0, n - 1))] = bad
    ds = PreferenceDataset()
    with pytest.raises(ValueError, match="labels must lie in"):
        ds.add(make_batch(ids, 2, 1), make_batch(ids, 2, 2), labels)
    assert len(ds) == 0 and ds.horizon is None  # nothing stored, no schema fixed


@settings(max_examples=25, deadline=None)
@given(n1=st.integers(1, 5), n2=st.integers(1, 5), n_labels=st.integers(0, 6))
def test_mismatched_lengths_raise_naming_the_argument(n1, n2, n_labels):
    assume(n1 != n2 or n_labels != n1)
    ds = PreferenceDataset()
    seg1, seg2 = make_batch(np.arange(n1), 2, 1), make_batch(np.arange(n2), 2, 2)
    match = "seg1 and seg2 must hold the same number" if n1 != n2 else f"labels must have length {n1}"
    with pytest.raises(ValueError, match=match):
        ds.add(seg1, seg2, np.ones(n_labels))
    assert len(ds) == 0


def test_other_bad_inputs_name_the_argument():
    ds = PreferenceDataset()
    b1, b2 = make_batch(np.arange(3), 2, 1), make_batch(np.arange(3), 2, 2)
    with pytest.raises(ValueError, match="labels must lie in"):
        ds.add(b1, b2, [0.0, 0.3, 1.0])  # only 0, 0.5 and 1 are labels
    with pytest.raises(TypeError, match="labels must be numeric"):
        ds.add(b1, b2, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"labels must have shape \[N\]"):
        ds.add(b1, b2, np.ones((3, 1)))
    with pytest.raises(ValueError, match="keep must be a bool array"):
        ds.add(b1, b2, np.ones(3), keep=np.ones(3))
    with pytest.raises(ValueError, match="keep must be a bool array"):
        ds.add(b1, b2, np.ones(3), keep=np.ones(2, bool))
    assert len(ds) == 0
    ds.add(b1, b2, np.ones(3))
    with pytest.raises(ValueError, match="horizon 3, the dataset stores horizon 2"):
        ds.add(make_batch(np.arange(3), 3, 1), make_batch(np.arange(3), 3, 2), np.ones(3))
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        PreferenceDataset(capacity=0)
    with pytest.raises(ValueError, match="policy must be"):
        PreferenceDataset(policy="lifo")
    assert len(ds) == 3
