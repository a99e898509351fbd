"""Absorbing states for preference fragments (DAC normalisation r(absorbing) = 0)."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from birl.feedback import (
    Demonstrations,
    PreferenceDataset,
    Segment,
    SegmentBatch,
    SyntheticTeacher,
    bradley_terry_nll,
    sample_segments_from_buffer,
    sample_segments_from_rollouts,
    segment_returns,
    valid_window_starts,
)
from birl.feedback.human import HumanTeacher
from birl.reward_models import MlpReward, RewardEnsemble

# one env, three episodes: rows 0-2 terminate, rows 3-6 are truncated, rows 7-11 terminate
DONES = np.zeros(12, bool)
DONES[[2, 6, 11]] = True
TERMS = np.zeros(12, bool)
TERMS[[2, 11]] = True


def buffer_segments(n, horizon=4, rng=0, **kw):
    obs = np.arange(12.0)[:, None]
    return sample_segments_from_buffer(
        obs, 10 * obs, np.ones(12), DONES, horizon=horizon, n=n, rng=rng, next_obs=obs + 0.5, env_axis=False, **kw
    )


def test_valid_starts_run_past_terminations_but_never_truncations():
    inside = valid_window_starts(DONES, 4)
    np.testing.assert_array_equal(inside, [0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0])
    # every start of a terminated episode; the truncated one keeps only the window ending on its last step
    np.testing.assert_array_equal(valid_window_starts(DONES, 4, TERMS), [1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="terminations must be a subset of dones"):
        valid_window_starts(DONES, 4, ~DONES)
    with pytest.raises(ValueError, match="terminations must have the shape"):
        valid_window_starts(DONES, 4, TERMS[:5])


def test_buffer_fragments_pad_with_the_terminal_observation():
    b = buffer_segments(9, terminations=TERMS)  # all 9 valid starts
    assert sorted(b.starts) == [0, 1, 2, 3, 7, 8, 9, 10, 11]
    for s in b:
        real = ~s.absorbing
        t0 = s.start
        n_real = int(real.sum())
        np.testing.assert_array_equal(s.obs[real, 0], np.arange(t0, t0 + n_real))
        np.testing.assert_array_equal(s.true_rewards, real.astype(float))
        end = t0 + n_real - 1  # the terminal row
        if s.absorbing.any():
            assert TERMS[end]
            np.testing.assert_array_equal(s.obs[~real, 0], end + 0.5)  # the terminal observation
            np.testing.assert_array_equal(s.next_obs[~real, 0], end + 0.5)
            np.testing.assert_array_equal(s.acts[~real], 0)
    assert b.absorbing.sum() == 3 + 2 + 1 + 3 + 2 + 1  # starts 0, 1, 2 and 9, 10, 11
    np.testing.assert_array_equal(b.alive, ~b.absorbing)


def test_without_terminations_fragments_stay_inside_episodes():
    b = buffer_segments(3)
    assert b.absorbing is None
    assert sorted(b.starts) == [3, 7, 8]
    np.testing.assert_array_equal(b.alive, 1)


def test_ring_buffer_with_terminations():
    """A wrapped buffer (pos=5): time runs 5..11, 0..4.  Rows 5, 6 are the tail of the truncated
    episode and rows 3, 4 the start of one cut by the write pointer: neither can be padded."""
    rng = np.random.default_rng(0)
    obs = np.arange(12.0)[:, None, None]
    dones, terms = DONES[:, None], TERMS[:, None]
    b = sample_segments_from_buffer(obs, obs, np.ones((12, 1)), dones, horizon=4, n=200, rng=rng, terminations=terms, pos=5, replace=True)
    assert set(b.starts) == {7, 8, 9, 10, 11, 0, 1, 2}
    for s in b:  # a padded fragment never wraps into the next episode
        assert np.all(np.diff(s.obs[~s.absorbing, 0]) == 1)


def test_rollout_fragments_with_absorbing_states():
    rollouts = [
        dict(obs=np.arange(4.0)[:, None], acts=np.ones(3), rewards=np.ones(3), terminated=True),
        dict(obs=np.arange(3.0)[:, None], acts=np.ones(2), rewards=np.ones(2)),  # truncated and too short: skipped
        dict(obs=np.arange(0.0), acts=np.ones(0), rewards=np.ones(0)),  # empty
        dict(obs=100 + np.arange(6.0)[:, None], acts=np.ones(5), rewards=np.ones(5), terminated=True),
    ]
    b = sample_segments_from_rollouts(rollouts, horizon=4, n=8, rng=1, absorbing=True)
    assert sorted(zip(b.episode_ids, b.starts)) == [(0, 0), (0, 1), (0, 2), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]
    for s in b:
        n_real = int((~s.absorbing).sum())
        base = 0 if s.episode_id == 0 else 100
        np.testing.assert_array_equal(s.obs[: n_real, 0], base + s.start + np.arange(n_real))
        np.testing.assert_array_equal(s.obs[n_real:, 0], base + s.start + n_real)  # final observation
    plain = sample_segments_from_rollouts(rollouts, horizon=4, n=2, rng=1)
    assert plain.absorbing is None and sorted(zip(plain.episode_ids, plain.starts)) == [(3, 0), (3, 1)]


def test_segment_validation():
    kw = dict(obs=np.zeros((3, 2)), acts=np.zeros((3, 1)), true_rewards=[1.0, 0.0, 0.0])
    Segment(**kw, absorbing=[0, 1, 1])
    with pytest.raises(ValueError, match="stays there"):
        Segment(**kw, absorbing=[0, 1, 0])
    with pytest.raises(ValueError, match="start in a real"):
        Segment(**kw, absorbing=[1, 1, 1])
    with pytest.raises(ValueError, match="true reward 0"):
        Segment(obs=np.zeros((3, 2)), acts=np.zeros((3, 1)), true_rewards=[1.0, 1.0, 0.0], absorbing=[0, 1, 1])
    with pytest.raises(ValueError, match="absorbing must have shape"):
        Segment(**kw, absorbing=[0, 1])
    with pytest.raises(ValueError, match="booleans"):
        Segment(**kw, absorbing=[0, 2, 2])


def test_stacking_fills_missing_masks_with_real_steps():
    with_mask = Segment(np.zeros((3, 2)), np.zeros((3, 1)), [1.0, 0.0, 0.0], absorbing=[0, 1, 1])
    without = Segment(np.zeros((3, 2)), np.zeros((3, 1)), [1.0, 2.0, 3.0])
    b = SegmentBatch.from_segments([with_mask, without])
    np.testing.assert_array_equal(b.absorbing, [[0, 1, 1], [0, 0, 0]])
    c = SegmentBatch.concatenate([SegmentBatch.from_segments([without]), SegmentBatch.from_segments([with_mask])])
    np.testing.assert_array_equal(c.absorbing, [[0, 0, 0], [0, 1, 1]])
    assert SegmentBatch.from_segments([without, without]).absorbing is None


class Constant(torch.nn.Module):
    """r(s, a) = c + s[0]; NaN where s[0] is NaN."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(float(c)))

    def forward(self, obs, acts=None, next_obs=None):
        return self.c + obs[:, 0]


def test_segment_returns_give_absorbing_steps_reward_zero():
    obs = np.zeros((2, 4, 1))
    obs[0, 2:] = np.nan  # whatever the model says on absorbing steps must not leak
    b = SegmentBatch(obs, np.zeros((2, 4, 1)), np.zeros((2, 4)), absorbing=np.array([[0, 0, 1, 1], [0, 0, 0, 0]], bool))
    r = segment_returns(Constant(3.0), b)
    np.testing.assert_allclose(r.detach().numpy(), [6.0, 12.0])
    r.sum().backward()  # finite gradients despite the NaN inputs
    ens = RewardEnsemble([MlpReward(1, 1, hidden=(4,)) for _ in range(2)])
    b.obs[0, 2:] = 0.0
    members = segment_returns(ens, b, per_member=True)
    single = torch.stack([segment_returns(m, b) for m in ens.models])
    torch.testing.assert_close(members, single)
    with torch.no_grad():
        full = ens.members(torch.zeros(8, 1), torch.zeros(8, 1)).reshape(2, 2, 4)
    torch.testing.assert_close(members[:, 0], full[:, 0, :2].sum(-1))


def test_absorbing_states_identify_the_reward_constant():
    """Bradley-Terry on equal-length fragments cannot tell r from r + c; with absorbing steps of
    reward 0 it can, which is what makes termination good or bad for the learner."""
    b1 = SegmentBatch(np.zeros((1, 4, 1)), np.zeros((1, 4, 1)), np.ones((1, 4)), absorbing=np.zeros((1, 4), bool))
    b2 = SegmentBatch(np.zeros((1, 4, 1)), np.zeros((1, 4, 1)), [[1.0, 0, 0, 0]], absorbing=np.array([[0, 1, 1, 1]], bool))
    y = torch.ones(1)
    losses = {c: bradley_terry_nll(segment_returns(Constant(c), b1), segment_returns(Constant(c), b2), y).item() for c in (-1.0, 0.0, 1.0)}
    assert losses[1.0] < losses[0.0] < losses[-1.0]  # surviving preferred: a positive constant explains it
    no_mask = lambda b: SegmentBatch(b.obs, b.acts, b.true_rewards)  # noqa: E731
    flat = {c: bradley_terry_nll(segment_returns(Constant(c), no_mask(b1)), segment_returns(Constant(c), no_mask(b2)), y).item() for c in (-1.0, 1.0)}
    assert flat[-1.0] == pytest.approx(flat[1.0])


def test_a_reward_learned_with_absorbing_states_rewards_survival():
    """InvertedPendulum-v5 pays +1 per step alive (0 on the step that falls).  Fragments that run
    into the absorbing state (reward 0) teach the model that a real step is worth about +1, so a
    learner on it avoids falling; inside episodes that level is never pinned down."""
    env = gym.make("InvertedPendulum-v5")
    rng = np.random.default_rng(0)
    env.action_space.seed(0)
    demos = Demonstrations.collect(lambda o: env.action_space.sample(), env, n_episodes=40, seed=0)
    assert all(t.terminated for t in demos.trajectories)
    segs = demos.sample_segments(5, 2000, rng=rng, replace=True, absorbing=True)
    s1, s2 = segs[:1000], segs[1000:]
    y, _ = SyntheticTeacher().label(s1, s2)
    assert 0.1 < np.mean(y != 0.5) < 0.9
    torch.manual_seed(0)
    model = MlpReward(4, 1, hidden=(32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        bradley_terry_nll(segment_returns(model, s1), segment_returns(model, s2), torch.as_tensor(y)).backward()
        opt.step()
    with torch.no_grad():
        alive_reward = model(torch.as_tensor(segs.obs[segs.alive > 0], dtype=torch.float32), torch.as_tensor(segs.acts[segs.alive > 0], dtype=torch.float32))
    assert alive_reward.mean() > 0.5  # r(absorbing) = 0: a real step is worth about the true +1
    assert (alive_reward > 0).float().mean() > 0.9


def test_dataset_round_trip_and_schema(tmp_path):
    b = buffer_segments(6, terminations=TERMS, replace=True)
    ds = PreferenceDataset()
    ds.add(b[:3], b[3:], [1.0, 0.0, 0.5])
    path = tmp_path / "prefs.npz"
    ds.save(path)
    s1, s2, _ = PreferenceDataset.load(path)[:]
    np.testing.assert_array_equal(s1.absorbing, b[:3].absorbing)
    np.testing.assert_array_equal(s2.absorbing, b[3:].absorbing)
    with pytest.raises(ValueError, match="both carry absorbing"):
        ds.add(b[:1], SegmentBatch(b.obs[:1], b.acts[:1], b.true_rewards[:1], b.next_obs[:1]), [1.0])
    no_mask = buffer_segments(2)
    with pytest.raises(ValueError, match="missing"):
        ds.add(no_mask[:1], no_mask[1:], [1.0])


def test_human_frames_grey_out_absorbing_steps(tmp_path):
    b = buffer_segments(9, terminations=TERMS)
    teacher = HumanTeacher(tmp_path, wait=0)
    f1, f2 = teacher._frames(b, b, int(np.argmax(b.absorbing.any(1))))
    i = int(np.argmax(b.absorbing.any(1)))
    plain = HumanTeacher(tmp_path, wait=0)._frames(SegmentBatch(b.obs, b.acts, b.true_rewards), SegmentBatch(b.obs, b.acts, b.true_rewards), i)[0]
    real = ~b.absorbing[i]
    np.testing.assert_array_equal(f1[real], plain[real])
    assert not np.array_equal(f1[~real], plain[~real])
    assert f1.dtype == np.uint8 and f1[~real].min() >= 128


# ------------------------------------------------------------------ agents
def pendulum_agent(algo="sobirl", **kw):
    from agents import MSoBiRL, SoBiRL
    from tests.conftest import fast_agent_kwargs
    from tests.test_msobirl import fast_model

    if algo == "msobirl":
        return MSoBiRL("MlpPolicy", "InvertedPendulum-v5", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs(**kw), **fast_model())
    return SoBiRL("MlpPolicy", "InvertedPendulum-v5", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs(**kw))


def padded_pair(model):
    """Two fragments of the agent's recent window that run into the absorbing state."""
    win = model._recent_window()
    segs = sample_segments_from_buffer(win["obs"], win["acts"], win["true_rewards"], win["dones"], horizon=10, n=400, rng=0,
                                       next_obs=win["next_obs"], terminations=win["terminations"], replace=True)
    padded = segs[np.flatnonzero(segs.absorbing.any(1))]
    return padded[np.array([0])], padded[np.array([1])]


def test_agent_queries_run_past_terminations():
    model = pendulum_agent()
    model.learn(300)
    ds = model.preferences.arrays()
    assert ds["absorbing1"].any() and ds["absorbing2"].any()  # the random policy falls within 10 steps
    plain = pendulum_agent(absorbing_states=False)
    plain.learn(300)
    assert "absorbing1" not in plain.preferences.arrays()
    with pytest.raises(TypeError, match="absorbing_states must be a bool"):
        pendulum_agent(absorbing_states="yes")


@pytest.mark.parametrize("algo, directions", [("sobirl", "_score_directions"), ("sobirl", "_myopic_directions"), ("msobirl", "_myopic_directions")])
def test_estimator_directions_ignore_absorbing_steps(algo, directions):
    model = pendulum_agent(algo)
    model.learn(300)
    assert algo != "msobirl" or model.estimator == "model"
    pair = padded_pair(model)

    def run(batches):
        torch.manual_seed(0)  # the expectations over the policy sample actions
        model._outer_rng = np.random.default_rng(0)
        if algo == "msobirl":  # and M-SoBiRL's model rollouts
            model._model_rng.manual_seed(0)
        with torch.no_grad():
            return getattr(model, directions)(batches)

    before = run(list(pair))
    scrambled = []
    for seg in pair:  # whatever sits in the absorbing steps
        obs, acts = seg.obs.copy(), seg.acts.copy()
        obs[seg.absorbing] = 5.0
        acts[seg.absorbing] = 0.7
        scrambled.append(SegmentBatch(obs, acts, seg.true_rewards, seg.next_obs, absorbing=seg.absorbing))
    torch.testing.assert_close(run(scrambled), before)
    unmasked = [SegmentBatch(s.obs, s.acts, s.true_rewards, s.next_obs) for s in scrambled]
    assert not torch.allclose(run(unmasked), before)


def test_branch_estimator_restarts_only_real_steps(monkeypatch):
    import agents.sobirl as sobirl

    model = pendulum_agent(estimator="branch", branch_states=1000, branch_horizon=3)
    model.learn(300)
    pair = padded_pair(model)
    restarted = []

    def record(log, env_id, snap, obs, a0, *args):
        restarted.append(np.asarray(obs).copy())
        return torch.zeros(model.reward_model.feature_dim)

    monkeypatch.setattr(sobirl, "branch_rollout_gradient", record)
    model._branch_directions(list(pair))
    real = np.concatenate([seg.obs[0][~seg.absorbing[0]] for seg in pair])
    assert len(restarted) == 2 * len(real)  # every real step once, with its own action and with pi's
    np.testing.assert_array_equal(np.unique(np.stack(restarted), axis=0), np.unique(real, axis=0))
