"""Feedback: segments, synthetic teacher, query selection/schedules, datasets and losses."""

import math

import numpy as np
import pytest
import torch

from birl.feedback import (
    BudgetedSchedule,
    ConstantSchedule,
    Demonstrations,
    HyperbolicSchedule,
    PreferenceDataset,
    Segment,
    SegmentBatch,
    SyntheticTeacher,
    Trajectory,
    bradley_terry_nll,
    demonstration_nll,
    make_schedule,
    preference_accuracy,
    sample_segments_from_buffer,
    sample_segments_from_rollouts,
    segment_returns,
    select_disagreement,
    select_entropy,
    select_queries,
    select_uniform,
    valid_window_starts,
)
from birl.reward_models import MlpReward, RewardEnsemble
from birl.serialization import CorruptFileError


def random_batch(rng, n, h=5, obs_dim=3, act_dim=2, next_obs=True):
    return SegmentBatch(
        obs=rng.normal(size=(n, h, obs_dim)).astype(np.float32),
        acts=rng.normal(size=(n, h, act_dim)).astype(np.float32),
        true_rewards=rng.normal(size=(n, h)),
        next_obs=rng.normal(size=(n, h, obs_dim)).astype(np.float32) if next_obs else None,
        env_ids=rng.integers(0, 4, n),
        episode_ids=rng.integers(0, 100, n),
        starts=rng.integers(0, 1000, n),
    )


def binomial_bound(n, p, sigmas=5.0):
    return sigmas * math.sqrt(max(p * (1 - p), 1e-12) / n)


# ------------------------------------------------------------------------------------ segments


def test_segment_validation_names_fields():
    with pytest.raises(ValueError, match="true_rewards must have shape"):
        Segment(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="acts must have length H=3"):
        Segment(np.zeros((3, 2)), np.zeros((4, 1)), np.zeros(3))
    with pytest.raises(ValueError, match="next_obs"):
        Segment(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(3), next_obs=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="learned_rewards"):
        Segment(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(3), learned_rewards=np.zeros(2))
    with pytest.raises(ValueError, match=r"obs must have shape \[N=2, H=3"):
        SegmentBatch(np.zeros((2, 4, 2)), np.zeros((2, 3, 1)), np.zeros((2, 3)))


def test_segment_batch_indexing_and_stacking():
    rng = np.random.default_rng(0)
    b = random_batch(rng, 6)
    s = b[2]
    assert isinstance(s, Segment) and s.horizon == 5 and s.env_id == b.env_ids[2]
    np.testing.assert_array_equal(s.obs, b.obs[2])
    sub = b[1:4]
    assert isinstance(sub, SegmentBatch) and len(sub) == 3
    again = SegmentBatch.from_segments(list(b))
    for f in ("obs", "acts", "true_rewards", "next_obs", "env_ids", "episode_ids", "starts"):
        np.testing.assert_array_equal(getattr(again, f), getattr(b, f))
    cat = SegmentBatch.concatenate([b[:2], b[2:]])
    np.testing.assert_array_equal(cat.obs, b.obs)
    np.testing.assert_allclose(b.true_returns(), b.true_rewards.sum(1))
    np.testing.assert_allclose(b.true_returns(0.5)[0], sum(0.5 ** (4 - t) * b.true_rewards[0, t] for t in range(5)))


def test_valid_window_starts():
    dones = np.array([0, 0, 1, 0, 0, 0, 1, 0], bool)
    valid = valid_window_starts(dones, 3)
    # windows [0,3) ok (done on its last step), [1,4) crosses, [2,5) crosses, [3,6) ok, [4,7) ok, [5,8) crosses
    np.testing.assert_array_equal(valid, [1, 0, 0, 1, 1, 0, 0, 0])


def _buffer(T, n_envs, seed=0, p_done=0.08):
    """obs[t, e] = (t, e) and rewards = t + 100 e, so continuity is easy to check."""
    rng = np.random.default_rng(seed)
    t = np.arange(T)[:, None].repeat(n_envs, 1)
    e = np.arange(n_envs)[None].repeat(T, 0)
    obs = np.stack([t, e], -1).astype(np.float32)
    acts = rng.normal(size=(T, n_envs, 1)).astype(np.float32)
    rewards = (t + 100 * e).astype(np.float32)
    dones = rng.random((T, n_envs)) < p_done
    return obs, acts, rewards, dones


def _check_no_crossing(batch, dones):
    for i in range(len(batch)):
        rows, env = batch.obs[i, :, 0].astype(int), int(batch.env_ids[i])
        assert np.all(batch.obs[i, :, 1] == env)
        assert not dones[rows[:-1], env].any(), "fragment crosses an episode end"
        np.testing.assert_array_equal(batch.true_rewards[i], rows + 100 * env)
        assert batch.starts[i] == rows[0]
        assert batch.episode_ids[i] == dones[: rows[0], env].sum()


def test_sample_from_buffer_never_crosses_episodes():
    obs, acts, rewards, dones = _buffer(400, 3)
    b = sample_segments_from_buffer(obs, acts, rewards, dones, horizon=6, n=300, rng=0, next_obs=obs + 1)
    assert b.obs.shape == (300, 6, 2) and b.acts.shape == (300, 6, 1) and b.true_rewards.shape == (300, 6)
    _check_no_crossing(b, dones)
    for i in range(len(b)):
        assert np.all(np.diff(b.obs[i, :, 0]) == 1)
    np.testing.assert_array_equal(b.next_obs, b.obs + 1)
    again = sample_segments_from_buffer(obs, acts, rewards, dones, horizon=6, n=300, rng=0)
    np.testing.assert_array_equal(again.obs, b.obs)  # seeded
    single = sample_segments_from_buffer(obs[:, 0], acts[:, 0], rewards[:, 0], dones[:, 0], horizon=6, n=20, rng=1, env_axis=False)
    assert single.obs.shape == (20, 6, 2) and np.all(single.env_ids == 0)


def test_sample_from_ring_buffer_respects_write_pointer():
    T, pos, H = 50, 20, 8
    obs, acts, rewards, dones = _buffer(T, 2, seed=3, p_done=0.0)
    # physical row r holds time step (r - pos) % T: newest data just before pos, oldest at pos
    time = (np.arange(T) - pos) % T
    obs[..., 0] = time[:, None]
    b = sample_segments_from_buffer(obs, acts, rewards, dones, horizon=H, n=500, rng=0, pos=pos, full=True, replace=True)
    steps = b.obs[:, :, 0]
    assert np.all(np.diff(steps, axis=1) == 1)  # consecutive in time, including across row T-1 -> 0
    assert steps.max() == T - 1 and steps.min() == 0
    wrapped = ((b.starts + H - 1) % T) < b.starts
    assert wrapped.any()  # some fragments wrap around the physical end of the array
    # a buffer that has not wrapped: only rows [0, pos) are valid
    b = sample_segments_from_buffer(obs, acts, rewards, dones, horizon=H, n=200, rng=0, pos=pos, full=False, replace=True)
    assert b.starts.max() <= pos - H


def test_sample_from_buffer_errors():
    obs, acts, rewards, dones = _buffer(30, 2)
    with pytest.raises(ValueError, match="horizon"):
        sample_segments_from_buffer(obs, acts, rewards, dones, horizon=0, n=1)
    with pytest.raises(ValueError, match="no valid fragment"):
        sample_segments_from_buffer(obs, acts, rewards, dones, horizon=31, n=1)
    with pytest.raises(ValueError, match="without replacement"):
        sample_segments_from_buffer(obs, acts, rewards, np.zeros_like(dones), horizon=25, n=100)
    with pytest.raises(ValueError, match="acts must have leading shape"):
        sample_segments_from_buffer(obs, acts[:10], rewards, dones, horizon=3, n=1)


def test_sample_from_rollouts():
    rng = np.random.default_rng(0)
    trajs = [
        Trajectory(np.arange(t + 1)[:, None] + 1000 * i, rng.normal(size=(t, 2)), np.arange(t) + 1000 * i)
        for i, t in enumerate([3, 10, 40])
    ]
    b = sample_segments_from_rollouts(trajs, horizon=5, n=100, rng=1, replace=True)
    assert b.obs.shape == (100, 5, 1) and b.next_obs is not None
    assert not np.any(b.episode_ids == 0)  # the 3-step episode is too short
    np.testing.assert_array_equal(b.next_obs, b.obs + 1)
    np.testing.assert_array_equal(b.true_rewards, b.obs[..., 0])
    np.testing.assert_array_equal(b.starts, b.obs[:, 0, 0] - 1000 * b.episode_ids)
    # windows are spread uniformly: episode 2 has 36 of the 42 valid windows
    many = sample_segments_from_rollouts(trajs, horizon=5, n=20000, rng=2, replace=True)
    frac = np.mean(many.episode_ids == 2)
    assert abs(frac - 36 / 42) < binomial_bound(20000, 36 / 42)
    dicts = [{"obs": t.obs[:-1], "acts": t.acts, "rewards": t.rewards} for t in trajs]
    assert sample_segments_from_rollouts(dicts, horizon=5, n=3, rng=0).next_obs is None
    with pytest.raises(ValueError, match=r"rollouts\[0\] must have keys"):
        sample_segments_from_rollouts([{"obs": np.zeros(3)}], horizon=2, n=1)
    with pytest.raises(ValueError, match="obs must have length T\\+1"):
        Trajectory(np.zeros((3, 1)), np.zeros((3, 1)), np.zeros(3))


# ------------------------------------------------------------------------------------ teacher


def test_teacher_uses_true_rewards_never_learned_ones():
    rng = np.random.default_rng(0)
    a, b = random_batch(rng, 200), random_batch(rng, 200)
    # learned rewards that order every pair the opposite way to the truth
    a.learned_rewards, b.learned_rewards = -a.true_rewards * 10, -b.true_rewards * 10
    labels, keep = SyntheticTeacher(seed=0).label(a, b)
    assert keep.all() and labels.dtype == np.float32
    np.testing.assert_array_equal(labels, (a.true_returns() > b.true_returns()).astype(np.float32))


def test_teacher_rational_labels_agree_with_returns_and_ties():
    rng = np.random.default_rng(1)
    a, b = random_batch(rng, 500), random_batch(rng, 500)
    labels, _ = SyntheticTeacher().label(a, b)
    r1, r2 = a.true_returns(), b.true_returns()
    assert np.all(labels[r1 > r2] == 1) and np.all(labels[r1 < r2] == 0)
    tie, _ = SyntheticTeacher().label(a[0], a[0])
    assert tie.tolist() == [0.5]
    single, keep = SyntheticTeacher().label(a[0], b[0])
    assert single.shape == (1,) and keep.shape == (1,)


def test_teacher_bradley_terry_frequency_matches_sigmoid():
    n, beta, diff = 20000, 0.7, 1.3
    r1 = np.zeros((n, 4))
    r1[:, 0] = diff
    r2 = np.zeros((n, 4))
    labels, _ = SyntheticTeacher(beta=beta, seed=0).label_rewards(r1, r2)
    p = 1 / (1 + math.exp(-beta * diff))
    assert abs(labels.mean() - p) < binomial_bound(n, p)
    # a range of differences at once: per-bin frequencies follow sigmoid(beta * diff)
    diffs = np.repeat(np.linspace(-3, 3, 5), n // 5)
    labels, _ = SyntheticTeacher(beta=beta, seed=1).label_rewards(diffs[:, None], np.zeros((len(diffs), 1)))
    for d in np.unique(diffs):
        p = 1 / (1 + math.exp(-beta * d))
        assert abs(labels[diffs == d].mean() - p) < binomial_bound(n // 5, p)


def test_teacher_mistake_rate():
    n, eps = 20000, 0.15
    rng = np.random.default_rng(2)
    r1, r2 = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
    truth = (r1.sum(1) > r2.sum(1)).astype(np.float32)
    labels, _ = SyntheticTeacher(eps_mistake=eps, seed=3).label_rewards(r1, r2)
    assert abs(np.mean(labels != truth) - eps) < binomial_bound(n, eps)


def test_teacher_myopia_equal_skip_and_seed():
    # segment 1 is better early, segment 2 better at the end
    r1, r2 = np.array([[10.0, 0.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 0.0, 5.0]])
    assert SyntheticTeacher().label_rewards(r1, r2)[0][0] == 1
    assert SyntheticTeacher(gamma=0.5).label_rewards(r1, r2)[0][0] == 0  # 10 * 0.125 < 5
    eq = SyntheticTeacher(equal_threshold=1.0).label_rewards(np.array([[1.0], [1.0]]), np.array([[1.5], [3.0]]))[0]
    assert eq.tolist() == [0.5, 0.0]
    labels, keep = SyntheticTeacher(skip_threshold=0.0).label_rewards(np.array([[-1.0], [2.0]]), np.array([[-3.0], [-5.0]]))
    assert keep.tolist() == [False, True]
    assert SyntheticTeacher(skip_threshold=None).label_rewards(np.array([[-1.0]]), np.array([[-3.0]]))[1].all()
    rng = np.random.default_rng(4)
    r1, r2 = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    t1, t2 = SyntheticTeacher(beta=1.0, eps_mistake=0.1, seed=7), SyntheticTeacher(beta=1.0, eps_mistake=0.1, seed=7)
    first = t1.label_rewards(r1, r2)[0]
    np.testing.assert_array_equal(first, t2.label_rewards(r1, r2)[0])
    assert not np.array_equal(first, t1.label_rewards(r1, r2)[0])  # the stream moves on
    t1.reset()
    np.testing.assert_array_equal(t1.label_rewards(r1, r2)[0], first)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"beta": -1.0}, "beta"), ({"beta": float("nan")}, "beta"), ({"gamma": 0.0}, "gamma"),
     ({"eps_mistake": 1.5}, "eps_mistake"), ({"equal_threshold": -1.0}, "equal_threshold")],
)  # fmt: skip
def test_teacher_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticTeacher(**kwargs)


def test_teacher_bad_inputs():
    t = SyntheticTeacher()
    with pytest.raises(ValueError, match="same number"):
        t.label_rewards(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        t.label_rewards(np.array([[np.nan]]), np.zeros((1, 1)))
    with pytest.raises(TypeError, match="seg1"):
        t.label("not a segment", "x")


# ------------------------------------------------------------------------------------ queries


def test_query_selection():
    idx = select_uniform(50, 10, rng=0)
    assert len(set(idx.tolist())) == 10 and idx.max() < 50
    # member returns [M=3, m=4]: pair 2 has members disagreeing most, pair 1 is a coin flip
    r1 = np.array([[0.0, 0.0, 5.0, 9.0], [0.0, 0.0, -5.0, 9.0], [0.0, 0.1, 0.0, 9.0]])
    r2 = np.array([[9.0, 0.0, 0.0, 0.0], [9.0, 0.1, 0.0, 0.0], [9.0, 0.0, 0.0, 0.0]])
    assert select_disagreement(r1, r2, 1).tolist() == [2]
    assert select_entropy(r1, r2, 2).tolist()[0] == 1
    assert select_entropy(r1[0], r2[0], 1).tolist() == [1]  # one model: [m] returns
    assert select_queries("uniform", 2, r1, r2, rng=0).shape == (2,)
    assert select_queries("disagreement", 1, r1, r2).tolist() == [2]
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        select_disagreement(r1[:1], r2[:1], 1)
    with pytest.raises(ValueError, match="k=5 exceeds"):
        select_entropy(r1, r2, 5)
    with pytest.raises(ValueError, match="method"):
        select_queries("greedy", 1, r1, r2)


def test_query_selection_with_a_reward_ensemble():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ens = RewardEnsemble.build(3, lambda: MlpReward(3, 2, hidden=(8,)))
    a, b = random_batch(rng, 20), random_batch(rng, 20)
    with torch.no_grad():
        r1, r2 = segment_returns(ens, a, per_member=True), segment_returns(ens, b, per_member=True)
    assert r1.shape == (3, 20)
    idx = select_disagreement(r1, r2, 5)
    assert idx.shape == (5,) and len(set(idx.tolist())) == 5


def test_schedules():
    const = ConstantSchedule(7)
    assert [const(s) for s in range(3)] == [7, 7, 7] and const(5, asked=20) == 22
    hyp = HyperbolicSchedule(100, decay=1.0)
    counts = [hyp(s) for s in range(5)]
    assert counts == [100, 50, 33, 25, 20] and sum(counts) == hyp.cumulative(4)
    bud = BudgetedSchedule(1000, total_steps=100, initial_fraction=0.2)
    counts = [bud(s) for s in range(150)]
    assert counts[0] == 200 and sum(counts) == 1000 and counts[120] == 0
    front = BudgetedSchedule(1000, total_steps=100, decay=10.0)
    assert front.cumulative(50) > 500 and front.cumulative(100) == 1000
    assert bud(50, asked=0) == bud.cumulative(50)  # catches up after missed calls
    assert isinstance(make_schedule("hyperbolic", initial=5.0), HyperbolicSchedule)
    with pytest.raises(ValueError, match="budget"):
        BudgetedSchedule(-1, 10)
    with pytest.raises(ValueError, match="step"):
        const(-1)
    with pytest.raises(ValueError, match="name"):
        make_schedule("exponential")


# ------------------------------------------------------------------------------------ datasets


def assert_datasets_equal(a: PreferenceDataset, b: PreferenceDataset) -> None:
    xa, xb = a.arrays(), b.arrays()
    assert xa.keys() == xb.keys()
    for k in xa:
        assert xa[k].dtype == xb[k].dtype, k
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
    assert (len(a), a.capacity, a.policy, a.n_added, a.n_evicted, a.n_rejected) == (
        len(b), b.capacity, b.policy, b.n_added, b.n_evicted, b.n_rejected
    )  # fmt: skip


def test_dataset_validation_errors():
    rng = np.random.default_rng(0)
    ds = PreferenceDataset()
    a, b = random_batch(rng, 4), random_batch(rng, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \{0, 0.5, 1\}"):
        ds.add(a, b, [0, 1, 0.3, 1])
    with pytest.raises(ValueError, match="labels must have length 4"):
        ds.add(a, b, [0, 1])
    with pytest.raises(ValueError, match="labels must lie"):
        ds.add(a, b, [0, 1, np.nan, 1])
    with pytest.raises(ValueError, match="same number of segments"):
        ds.add(a, b[:3], [0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"seg1.obs has per-pair shape \(5, 3\) but seg2.obs has \(5, 4\)"):
        ds.add(a, random_batch(rng, 4, obs_dim=4), [0, 1, 1, 1])
    with pytest.raises(ValueError, match="both carry next_obs"):
        ds.add(a, random_batch(rng, 4, next_obs=False), [0, 1, 1, 1])
    with pytest.raises(ValueError, match="keep must be a bool array"):
        ds.add(a, b, [0, 1, 1, 1], keep=[1, 0, 1, 1])
    assert len(ds) == 0
    ds.add(a, b, [0, 1, 0.5, 1])
    with pytest.raises(ValueError, match="segments have horizon 6, the dataset stores horizon 5"):
        ds.add(random_batch(rng, 2, h=6), random_batch(rng, 2, h=6), [0, 1])
    with pytest.raises(ValueError, match="missing"):
        ds.add(random_batch(rng, 2, next_obs=False), random_batch(rng, 2, next_obs=False), [0, 1])
    with pytest.raises(ValueError, match=r"acts1 has per-pair shape \(5, 1\), the dataset stores \(5, 2\)"):
        ds.add(random_batch(rng, 2, act_dim=1), random_batch(rng, 2, act_dim=1), [0, 1])
    with pytest.raises(ValueError, match="cannot be stored"):
        c, d = random_batch(rng, 2), random_batch(rng, 2)
        c.obs, d.obs = c.obs.astype(np.complex64), d.obs.astype(np.complex64)
        ds.add(c, d, [0, 1])
    with pytest.raises(ValueError, match="capacity"):
        PreferenceDataset(capacity=0)
    with pytest.raises(ValueError, match="policy"):
        PreferenceDataset(policy="lifo")


def test_dataset_add_access_and_keep_mask():
    rng = np.random.default_rng(1)
    ds = PreferenceDataset()
    a, b = random_batch(rng, 40), random_batch(rng, 40)
    labels, keep = SyntheticTeacher(skip_threshold=0.0).label(a, b)
    stored = ds.add(a, b, labels, keep)
    assert stored == keep.sum() == len(ds) and not keep.all()
    s1, s2, y = ds[:]
    np.testing.assert_array_equal(s1.obs, a.obs[keep])
    np.testing.assert_array_equal(s2.true_rewards, b.true_rewards[keep])
    np.testing.assert_array_equal(y, labels[keep])
    for _ in range(5):  # growth beyond the initial allocation keeps order
        ds.add(a, b, labels)
    assert len(ds) == keep.sum() + 200
    np.testing.assert_array_equal(ds.arrays()["obs1"][-40:], a.obs)
    seen = sum(len(y) for _, _, y in ds.iter_batches(32, rng=0))
    assert seen == len(ds)
    s1, s2, y = ds.sample(16, rng=0)
    assert len(s1) == len(s2) == len(y) == 16


def test_dataset_capacity_fifo_and_reject():
    rng = np.random.default_rng(2)
    batches = [(random_batch(rng, 7), random_batch(rng, 7), rng.choice([0.0, 0.5, 1.0], 7)) for _ in range(5)]
    fifo = PreferenceDataset(capacity=10, policy="fifo")
    reject = PreferenceDataset(capacity=10, policy="reject")
    added = [reject.add(*x) for x in batches]
    for x in batches:
        fifo.add(*x)
    all_obs = np.concatenate([x[0].obs for x in batches])
    assert len(fifo) == 10 and fifo.n_evicted == 25 and fifo.n_added == 35
    np.testing.assert_array_equal(fifo.arrays()["obs1"], all_obs[-10:])  # the newest 10, in order
    assert added == [7, 3, 0, 0, 0] and len(reject) == 10 and reject.n_rejected == 25
    np.testing.assert_array_equal(reject.arrays()["obs1"], all_obs[:10])
    big = PreferenceDataset(capacity=4)
    big.add(*batches[0])
    np.testing.assert_array_equal(big.arrays()["obs1"], batches[0][0].obs[-4:])


def test_dataset_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    for ds, with_next in [(PreferenceDataset(), True), (PreferenceDataset(capacity=9, policy="fifo"), False)]:
        for _ in range(3):  # the capacity dataset wraps around its ring
            a, b = random_batch(rng, 4, next_obs=with_next), random_batch(rng, 4, next_obs=with_next)
            ds.add(a, b, rng.choice([0.0, 0.5, 1.0], 4))
        path = tmp_path / f"prefs_{with_next}.npz"
        ds.save(path)
        loaded = PreferenceDataset.load(path)
        assert_datasets_equal(ds, loaded)
        loaded.add(a, b, [1, 1, 1, 1])  # still usable, same capacity policy
        assert len(loaded) == min(len(ds) + 4, ds.capacity or 10**9)
    empty = PreferenceDataset(capacity=3, policy="reject")
    empty.save(tmp_path / "empty.npz")
    assert_datasets_equal(empty, PreferenceDataset.load(tmp_path / "empty.npz"))
    data = path.read_bytes()
    (tmp_path / "bad.npz").write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptFileError):
        PreferenceDataset.load(tmp_path / "bad.npz")
    Demonstrations().save(tmp_path / "demos.npz")
    with pytest.raises(CorruptFileError, match="not a PreferenceDataset"):
        PreferenceDataset.load(tmp_path / "demos.npz")


class LineEnv:
    """A tiny gymnasium-API env (no gymnasium import): walk on a line, episode ends at |x| >= 3."""

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.x = float(self.rng.integers(-1, 2))
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 1.0 if int(action) == 1 else -1.0
        terminated = abs(self.x) >= 3
        return np.array([self.x], np.float32), -abs(self.x), terminated, False, {}


class SB3LikePolicy:
    def predict(self, obs, deterministic=True):
        return np.int64(1), None


def test_demonstrations_collect_save_load(tmp_path):
    demos = Demonstrations.collect(SB3LikePolicy(), LineEnv(), n_episodes=4, seed=0)
    assert len(demos) == 4 and all(t.terminated for t in demos)
    t0 = demos[0]
    assert t0.obs.shape == (len(t0) + 1, 1) and t0.acts.shape == (len(t0),)
    np.testing.assert_array_equal(t0.rewards, -np.abs(t0.obs[1:, 0]))
    same = Demonstrations.collect(SB3LikePolicy(), LineEnv(), n_episodes=4, seed=0)
    assert [len(t) for t in same] == [len(t) for t in demos]
    capped = Demonstrations.collect(lambda obs: 0 if obs[0] > 0 else 1, LineEnv(), n_episodes=2, seed=1, max_steps=5)
    assert all(t.truncated and len(t) == 5 for t in capped)
    flat = demos.transitions()
    assert flat["obs"].shape[0] == demos.n_transitions and flat["dones"].sum() == 4
    demos.save(tmp_path / "demos.npz")
    back = Demonstrations.load(tmp_path / "demos.npz")
    assert len(back) == len(demos)
    for x, y in zip(demos, back):
        for f in ("obs", "acts", "rewards"):
            assert getattr(x, f).dtype == getattr(y, f).dtype
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
        assert (x.terminated, x.truncated) == (y.terminated, y.truncated)
    assert demos.sample_segments(horizon=2, n=3, rng=0).obs.shape == (3, 2, 1)
    with pytest.raises(ValueError, match="n_episodes"):
        Demonstrations.collect(SB3LikePolicy(), LineEnv(), n_episodes=0)
    with pytest.raises(TypeError, match="policy"):
        Demonstrations.collect(42, LineEnv(), n_episodes=1, seed=0)


def test_from_minari_without_minari_is_import_error():
    try:
        import minari  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install minari"):
            Demonstrations.from_minari("D4RL/door/human-v2")
    else:
        pytest.skip("minari is installed; nothing is downloaded in tests")


# ------------------------------------------------------------------------------------ losses


def test_bradley_terry_nll_matches_formula():
    r1 = torch.tensor([1.0, -2.0, 0.5, 3.0], requires_grad=True)
    r2 = torch.tensor([0.0, 1.0, 0.5, -1.0])
    y = torch.tensor([1.0, 0.0, 0.5, 0.0])
    p = torch.sigmoid(r1 - r2)
    expected = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    torch.testing.assert_close(bradley_terry_nll(r1, r2, y, reduction="none"), expected)
    loss = bradley_terry_nll(r1, r2, y)
    torch.testing.assert_close(loss, expected.mean())
    loss.backward()
    torch.testing.assert_close(r1.grad, (p - y).detach() / 4)  # d/dR1 of the BCE
    smooth = bradley_terry_nll(r1, r2, y, label_smoothing=0.2, reduction="none")
    ys = 0.8 * y + 0.1
    torch.testing.assert_close(smooth, -(ys * torch.log(p) + (1 - ys) * torch.log(1 - p)))
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    torch.testing.assert_close(bradley_terry_nll(r1, r2, y, weights=w, reduction="sum"), (expected * w).sum())
    # numpy labels with 0.5, big returns stay finite
    assert torch.isfinite(bradley_terry_nll(torch.tensor([1e4]), torch.tensor([-1e4]), np.array([0.0])))
    with pytest.raises(ValueError, match="labels must lie"):
        bradley_terry_nll(r1, r2, torch.tensor([2.0, 0, 0, 0]))
    with pytest.raises(ValueError, match="returns1 and returns2"):
        bradley_terry_nll(r1, r2[:3], y[:3])
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_nll(r1, r2, y, label_smoothing=1.0)


def test_demonstration_nll():
    lp = torch.log(torch.tensor([[0.5, 0.25], [1.0, 0.5]]))
    torch.testing.assert_close(demonstration_nll(lp), -(lp.sum(1)).mean())
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(demonstration_nll(lp, mask, reduction="none"), torch.stack([-lp[0].sum(), -lp[1, 0]]))
    torch.testing.assert_close(demonstration_nll(lp.reshape(-1)), -lp.mean())
    with pytest.raises(ValueError, match="mask"):
        demonstration_nll(lp.reshape(-1), mask.reshape(-1))


def test_preference_accuracy():
    r1 = np.array([1.0, 0.0, 2.0, 0.0, 0.0])
    r2 = np.array([0.0, 1.0, 3.0, 0.01, 5.0])
    y = np.array([1.0, 0.0, 1.0, 0.5, 0.5])
    assert preference_accuracy(r1, r2, y) == pytest.approx(2 / 3)  # 0.5 labels ignored
    assert preference_accuracy(r1, r2, y, tie_tolerance=0.05) == pytest.approx(3 / 5)
    assert math.isnan(preference_accuracy(r1[3:], r2[3:], y[3:]))


def test_segment_returns_and_training_step():
    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    a, b = random_batch(rng, 8), random_batch(rng, 8)
    model = MlpReward(3, 2, hidden=(16,))
    r = segment_returns(model, a)
    assert r.shape == (8,)
    with torch.no_grad():
        manual = model(torch.as_tensor(a.obs.reshape(-1, 3)), torch.as_tensor(a.acts.reshape(-1, 2))).reshape(8, 5).sum(1)
    torch.testing.assert_close(r.detach(), manual)
    y, _ = SyntheticTeacher().label(a, b)
    loss = bradley_terry_nll(r, segment_returns(model, b), y)
    loss.backward()
    assert model.head.weight.grad is not None
    with pytest.raises(TypeError, match="per_member"):
        segment_returns(model, a, per_member=True)
