"""SB3 bilevel agents: smoke runs, save/load, relabelling, bad input, successor estimator validation."""

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from agents.sobirl import DRLHF, DiscreteDRLHF, DiscreteSoBiRL, SoBiRL
from agents.successor import reward_head_gradient
from birl.feedback import BudgetedSchedule, Demonstrations, SyntheticTeacher, sample_segments_from_buffer
from birl.hypergrad import hypergradient
from birl.losses import DemonstrationNLL
from birl.reward_models import MlpReward
from birl.tabular import TabularMDP, garnet
from envs.tabular_env import TabularEnv

from conftest import fast_agent_kwargs


def tabular_env(seed=0, max_steps=50):
    mdp = garnet(8, 3, 4, gamma=0.9, tau=1.0, seed=seed, branching=3)
    x_true = np.random.default_rng(seed).standard_normal(4)
    return mdp, x_true, TabularEnv(mdp, reward_params=x_true, max_episode_steps=max_steps)


def obs_batch(env, n=16, seed=0):
    env.observation_space.seed(seed)
    return np.stack([env.observation_space.sample() for _ in range(n)])


@pytest.mark.parametrize("algo", [SoBiRL, DRLHF])
def test_pendulum_smoke_save_load_predict(tmp_path, algo):
    model = algo("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs())
    model.learn(300)
    assert len(model.preferences) > 0
    # queried segments carry env-unit actions (Pendulum: [-2, 2]), as relabelling and the env wrapper use
    s1, s2, _ = model.preferences[np.arange(len(model.preferences))]
    assert max(np.abs(s1.acts).max(), np.abs(s2.acts).max()) > 1.0
    assert np.isfinite(model.preference_accuracy())
    obs = obs_batch(model.env)
    act, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "agent")
    loaded = algo.load(tmp_path / "agent", env=gym.make("Pendulum-v1"))
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], act)
    for a, b in zip(model.reward_model.state_dict().values(), loaded.reward_model.state_dict().values()):
        th.testing.assert_close(a, b)
    assert len(loaded.preferences) == len(model.preferences)
    np.testing.assert_array_equal(loaded.preferences.labels, model.preferences.labels)
    if algo is SoBiRL:
        for a, b in zip(model.successor.state_dict().values(), loaded.successor.state_dict().values()):
            th.testing.assert_close(a, b)
    loaded.learn(100, reset_num_timesteps=False)  # keeps training after a load


def test_logger_keys_and_true_return(tmp_path):
    model = SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs())
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(400, log_interval=1)
    with open(tmp_path / "progress.csv") as f:
        logged = f.readline().strip().split(",")
    for key in ("outer/loss", "outer/hypergrad_norm", "outer/pref_accuracy", "feedback/n_labels", "rollout/true_ep_rew_mean",
                "outer/direct_grad_norm", "outer/second_term_grad_norm"):
        assert key in logged, key
    # Monitor sits inside the reward wrapper: episode returns are TRUE returns (Pendulum: <= 0)
    assert all(ep["r"] <= 0 for ep in model.ep_info_buffer)


def test_the_two_gradient_terms_are_measured_apart():
    """``outer/direct_grad_norm`` and ``outer/second_term_grad_norm`` are the norms of the feedback
    loss's gradient and of the second term's, each against its own backward pass; DRLHF's is 0."""
    for algo in (SoBiRL, DRLHF):
        model = algo("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs())
        model.learn(300)
        s1, s2, y = model.preferences[np.arange(len(model.preferences))]
        on_policy = (s1, s2, y)
        score_dirs = model._score_directions([s1, s2]) if algo is SoBiRL else None
        surrogate, direct = model._reward_objective(on_policy, score_dirs)()
        direct_norm, second_norm = model._gradient_norms(direct, surrogate - direct)

        def norm(loss):
            model.reward_optimizer.zero_grad()
            loss.backward()
            return float(th.sqrt(sum((p.grad ** 2).sum() for p in model.reward_model.parameters() if p.grad is not None)))

        assert direct_norm > 0 and direct_norm == pytest.approx(norm(direct), rel=1e-5)
        second = model._hyper_surrogate(on_policy, score_dirs)
        if algo is DRLHF:
            assert second_norm == 0.0 and not second.requires_grad
        else:
            assert second_norm > 0 and second_norm == pytest.approx(norm(second), rel=1e-5)


@pytest.mark.parametrize("algo", [DiscreteSoBiRL, DiscreteDRLHF])
def test_tabular_discrete_smoke_and_relabelling(tmp_path, algo):
    mdp, x_true, env = tabular_env()
    model = algo("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), seed=0, gamma=0.9, **fast_agent_kwargs())
    model.learn(300)
    buf = model.replay_buffer
    n = buf.pos
    obs, act = buf.observations[:n, 0, 0].astype(int), buf.actions[:n, 0, 0].astype(int)
    # true rewards kept for the teacher are the env's table; rewards seen by SAC are the model's
    np.testing.assert_allclose(buf.true_rewards[:n, 0], mdp.reward(x_true)[obs, act], rtol=1e-5)
    with th.no_grad():
        expected = model.reward_model(th.as_tensor(obs), th.as_tensor(act), th.as_tensor(buf.next_observations[:n, 0, 0].astype(int)))
    np.testing.assert_allclose(buf.rewards[:n, 0], expected.numpy(), rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "agent")
    loaded = algo.load(tmp_path / "agent", env=env)
    o = np.arange(8)
    np.testing.assert_array_equal(loaded.predict(o, deterministic=True)[0], model.predict(o, deterministic=True)[0])


def test_demonstrations_feedback_smoke():
    mdp, x_true, env = tabular_env()
    expert = mdp.soft_solve(x_true).pi
    demos = Demonstrations.collect(lambda s: int(np.argmax(expert[s])), TabularEnv(mdp, reward_params=x_true, max_episode_steps=30), 3, seed=0)
    for algo in (DiscreteSoBiRL, DiscreteDRLHF):
        model = algo("MlpPolicy", env, feedback=demos, seed=0, gamma=0.9, **fast_agent_kwargs())
        before = [p.detach().clone() for p in model.reward_model.parameters()]
        model.learn(250)
        after = list(model.reward_model.parameters())
        assert any(not th.equal(a, b) for a, b in zip(before, after))


def test_bad_input_fails_at_construction():
    with pytest.raises(ValueError, match="feedback is required"):
        SoBiRL("MlpPolicy", "Pendulum-v1")
    with pytest.raises(ValueError, match="estimator='branch'"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), estimator="branch")
    with pytest.raises(ValueError, match="estimator must be one of"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), estimator="magic")
    with pytest.raises(ValueError, match="reward_model does not accept"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), reward_model=MlpReward(obs_dim=5, act_dim=1))
    with pytest.raises(ValueError, match="use DiscreteSoBiRL"):
        SoBiRL("MlpPolicy", "CartPole-v1", feedback=SyntheticTeacher())
    with pytest.raises(ValueError, match="n_queries"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), n_queries=0)
    with pytest.raises(ValueError, match="DRLHF has no hypergradient"):
        DRLHF("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), estimator="successor")
    with pytest.raises(TypeError, match="feedback must be"):
        SoBiRL("MlpPolicy", "Pendulum-v1", feedback="labels.npz")


def test_query_schedule_mapping_spends_the_budget_as_budgeted_schedule_says():
    """A mapping ``query_schedule`` is :class:`BudgetedSchedule`'s options: labels asked by each
    outer step follow its cumulative curve, front-loaded and never past ``n_queries``."""
    mdp, x_true, env = tabular_env()
    spec = {"initial_fraction": 0.25, "decay": 10.0}
    model = DiscreteDRLHF("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), seed=0, gamma=0.9,
                          **fast_agent_kwargs(n_queries=40, query_schedule=spec))
    asked = []

    class Record(BaseCallback):
        def _on_step(self):
            if self.model.num_timesteps % 100 == 2 and self.model.num_timesteps > 100:  # after outer steps 101, 201, ...
                asked.append(self.model._n_asked)
            return True

    model.learn(1000, callback=Record())
    expected = BudgetedSchedule(40, model._outer_total, **spec)
    assert asked == [expected.cumulative(k) for k in range(len(asked))]
    assert asked[0] == 10 and asked[-1] == 40 and len(model.preferences) == 40
    steps = np.diff(asked)  # falling rate: more labels early than an even spread would ask
    assert steps[0] > steps[-1] and asked[len(asked) // 2] > 10 + 30 * (len(asked) // 2) / (len(asked) - 1)
    for bad, match in [({"decay": -1.0}, "decay must be finite"), ({"initial": 0.5}, r"unknown option\(s\) \['initial'\]"),
                       ({"initial_fraction": "half"}, "query_schedule"), (["decay"], "query_schedule must be")]:
        with pytest.raises(ValueError, match=match):
            DiscreteDRLHF("MlpPolicy", env, feedback=SyntheticTeacher(), query_schedule=bad)


def test_successor_estimator_matches_exact_on_tabular_env():
    """Psi - E_pi Psi vs the exact grad_w(Q - V) of the agent's current policy (linear solves)."""
    mdp, x_true, env = tabular_env()
    rm = MlpReward.from_spaces(env.observation_space, env.action_space, hidden=(32,))
    model = DiscreteSoBiRL(
        "MlpPolicy", env, feedback=SyntheticTeacher(seed=0), reward_model=rm, n_queries=200, segment_length=5,
        outer_freq=500, learning_starts=200, gamma=mdp.gamma, ent_coef=0.5, seed=0, policy_kwargs=dict(net_arch=[64, 64]),
        successor_net_arch=(64, 64), successor_lr=1e-3,
    )
    model.learn(2500)
    S, A = mdp.n_states, mdp.n_actions
    obs, act = th.arange(S).repeat_interleave(A), th.arange(A).repeat(S)
    g = reward_head_gradient(model.reward_model, obs, act, obs).numpy().reshape(S, A, -1).astype(np.float64)
    with th.no_grad():
        pi = model.actor.action_probs(th.arange(S))[0].numpy().astype(np.float64)
        psi = model.successor.all_actions(th.arange(S)).numpy()
    pi /= pi.sum(1, keepdims=True)
    learned = psi - (pi[..., None] * psi).sum(1, keepdims=True)
    # exact: the tabular MDP whose linear features are grad_w r, at the agent's policy
    tm = TabularMDP(mdp.P, g, gamma=model.gamma, tau=model.alpha)
    loss = DemonstrationNLL.from_expert(mdp, mdp.soft_solve(x_true).pi)
    w = model.reward_model.head.weight.detach().numpy().reshape(-1).astype(np.float64)
    exact = hypergradient(tm, w, loss, "exact", pi=pi).grad
    estimate = -(loss.weights[..., None] * learned).sum((0, 1)) / model.alpha
    cos = exact @ estimate / (np.linalg.norm(exact) * np.linalg.norm(estimate))
    assert cos >= 0.95


def _truncated_advantage(mdp, model, horizon):
    """Exact ``grad_w(Q - V)`` of the agent's current policy with sums truncated at ``horizon``."""
    S, A = mdp.n_states, mdp.n_actions
    obs, act = th.arange(S).repeat_interleave(A), th.arange(A).repeat(S)
    g = reward_head_gradient(model.reward_model, obs, act, obs).numpy().reshape(S, A, -1).astype(np.float64)
    with th.no_grad():
        pi = model.actor.action_probs(th.arange(S))[0].numpy().astype(np.float64)
    pi /= pi.sum(1, keepdims=True)
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    gV = np.zeros((S, g.shape[-1]))
    for _ in range(horizon - 1):  # V_T = pi.g + gamma P_pi V_{T-1}
        gV = (pi[..., None] * g).sum(1) + model.gamma * P_pi @ gV
    gQ = g + model.gamma * np.einsum("sat,tk->sak", mdp.P, gV)
    gV = (pi[..., None] * gQ).sum(1)
    return gQ - gV[:, None]


def test_branch_estimator_restarts_from_snapshots_and_converges():
    mdp, x_true, env = tabular_env()
    model = DiscreteSoBiRL("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), estimator="branch", gamma=0.9, seed=0,
                           branch_states=8, **fast_agent_kwargs())
    model.learn(250)  # outer steps run the estimator inside training
    win = model._recent_window()
    segs = sample_segments_from_buffer(win["obs"], win["acts"], win["true_rewards"], win["dones"], horizon=5, n=2,
                                       rng=0, next_obs=win["next_obs"])
    pair = [segs[np.array([0])], segs[np.array([1])]]
    current = model._snapshots.current()
    # snapshots are aligned with replay rows: restoring one puts the env in that row's state
    for seg in pair:
        for t in range(5):
            snap = model._snapshots.get(int(model._window_rows[seg.starts[0] + t]), 0)
            model._snapshots.cloners[0].restore(model._snapshots.envs[0], snap)
            assert env.unwrapped.state == int(seg.obs[0, t].reshape(-1)[0])
    model._snapshots.restore_all(current)
    before = env.unwrapped.get_state()
    model.branch_states, model.branch_horizon = 10, 25
    errors = {}
    adv = _truncated_advantage(mdp, model, 25)
    expected = sum(adv[s.obs.reshape(1, 5).astype(int), s.acts.reshape(1, 5).astype(int)].sum(1) for s in pair)[0]
    for n in (4, 100):
        model.branch_rollouts = n
        estimate = model._branch_directions(pair).numpy()[0] * model.alpha
        errors[n] = np.linalg.norm(estimate - expected) / np.linalg.norm(expected)
    after = env.unwrapped.get_state()  # branching leaves the training env exactly as it was
    assert (after["state"], after["t"], after["rng"]) == (before["state"], before["t"], before["rng"])
    assert errors[100] < errors[4] / 2.5
    assert errors[100] < 0.35


def test_storm_reevaluates_the_new_sample_at_the_previous_parameters():
    """With objectives f_k(x) = <c_k, x> (gradient c_k wherever it is evaluated), STORM gives
    h_1 = c_1 and h_2 = c_2 + (1 - mu)(h_1 - c_2) = mu c_2 + (1 - mu) c_1."""
    mdp, x_true, env = tabular_env()
    model = DiscreteSoBiRL("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), storm_mu=0.25, seed=0, **fast_agent_kwargs())
    params = list(model.reward_model.parameters())
    rng = np.random.default_rng(0)
    cs = [[th.as_tensor(rng.standard_normal(tuple(p.shape)), dtype=p.dtype) for p in params] for _ in range(2)]
    applied = []
    for c in cs:
        objective = lambda c=c: (sum((ci * p).sum() for ci, p in zip(c, params)),) * 2  # noqa: E731
        model.reward_optimizer.zero_grad()
        objective()[0].backward()
        before = [p.detach().clone() for p in params]
        model._storm_correct(objective)
        assert all(th.equal(p, b) for p, b in zip(params, before))  # parameters restored after re-evaluation
        applied.append([p.grad.clone() for p in params])
        with th.no_grad():
            for p in params:
                p.add_(0.1)  # a step, so that x_2 != x_1
    for got, c1, c2 in zip(applied[1], cs[0], cs[1]):
        th.testing.assert_close(got, 0.25 * c2 + 0.75 * c1)
    for got, c1 in zip(applied[0], cs[0]):
        th.testing.assert_close(got, c1)
    model.learn(250)  # and it runs inside training
    assert model._storm_state is not None


def test_evaluating_on_the_true_reward_does_not_warn_about_env_types():
    """An EvalCallback on the unwrapped (TRUE-reward) env is the intended use: no type warning."""
    import warnings

    import gymnasium as gym
    from stable_baselines3.common.callbacks import EvalCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    from agents.sobirl import DRLHF
    from birl.feedback import SyntheticTeacher

    model = DRLHF("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), n_queries=4, segment_length=5,
                  learning_starts=20, outer_freq=20, reward_steps=1, batch_size=8, policy_kwargs={"net_arch": [8]}, seed=0)
    callback = EvalCallback(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), eval_freq=25, n_eval_episodes=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(30, callback=callback)
    assert callback.n_calls == 30 and callback.best_mean_reward > -np.inf
    assert not [w for w in caught if "not of the same type" in str(w.message)]


def test_a_warmup_that_outlasts_the_run_warns():
    """hypergrad_warmup >= the run's env steps silently turns SoBiRL into DRLHF: say so."""
    import warnings

    kwargs = dict(feedback=SyntheticTeacher(seed=0), n_queries=4, segment_length=5, learning_starts=10, outer_freq=10,
                  reward_steps=1, batch_size=8, policy_kwargs={"net_arch": [8]}, seed=0)
    with pytest.warns(UserWarning, match="hypergrad_warmup=40 .* never switches on"):
        SoBiRL("MlpPolicy", "Pendulum-v1", hypergrad_warmup=40, **kwargs).learn(40)
    for algo, warmup in ((SoBiRL, 39), (DRLHF, 40)):  # below the budget, or no hypergradient to wait for
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            algo("MlpPolicy", "Pendulum-v1", hypergrad_warmup=warmup, **kwargs).learn(40)
        assert not [w for w in caught if "hypergrad_warmup" in str(w.message)]


def test_reward_scaling_pays_the_inner_learner_the_reward_over_its_replay_rms(tmp_path):
    """``reward_scaling``: the replay holds ``r / rms`` (``rms`` refitted at every relabelling, so
    the relabelled rewards have unit RMS), the env wrapper pays the same, the hypergradient's
    temperature is ``alpha * rms``, and ``rms`` survives save / load."""
    _, _, env = tabular_env()
    model = DiscreteSoBiRL("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), reward_scaling=True, seed=0, **fast_agent_kwargs())
    model.learn(450)
    rms = float(model.inner_reward.rms)
    assert rms != 1.0 and model._n_outer >= 3
    assert model._tau() == pytest.approx(model.alpha * rms)
    buffer = model.replay_buffer
    n = buffer.pos
    obs, acts = buffer.observations[:n, 0], buffer.actions[:n, 0, 0]
    with th.no_grad():
        raw = model.reward_model(th.as_tensor(obs), th.as_tensor(acts).long(), th.as_tensor(buffer.next_observations[:n, 0])).numpy()
    # rows written after the last outer step came from the wrapper, the rest from the relabelling
    np.testing.assert_allclose(buffer.rewards[:n, 0], raw / rms, rtol=1e-5, atol=1e-6)
    model._relabel()
    assert np.sqrt(np.mean(buffer.rewards[:n] ** 2)) == pytest.approx(1.0, rel=1e-5)
    model.save(tmp_path / "agent")
    import zipfile

    with zipfile.ZipFile(tmp_path / "agent.zip") as archive:  # rms saved once, not pickled into data; no second copy of the weights
        assert "inner_reward.pth" not in archive.namelist() and '"inner_reward"' not in archive.read("data").decode()
        assert "inner_reward.rms" in th.load(archive.open("pytorch_variables.pth"), weights_only=False)
    loaded = DiscreteSoBiRL.load(tmp_path / "agent", env=env)
    assert loaded.reward_scaling and float(loaded.inner_reward.rms) == pytest.approx(float(model.inner_reward.rms))
    assert loaded.env.reward_model is loaded.inner_reward  # the wrapper pays the scaled reward
    assert not DiscreteSoBiRL("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), **fast_agent_kwargs()).reward_scaling


def test_reward_scaling_bad_values():
    _, _, env = tabular_env()
    with pytest.raises(TypeError, match="reward_scaling"):
        DiscreteSoBiRL("MlpPolicy", env, feedback=SyntheticTeacher(seed=0), reward_scaling="yes")
