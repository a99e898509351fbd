"""M-SoBiRL's ``model`` estimator (``birl.model_env.branched_advantage``, the function the continuous
agent calls) checked on a garnet with a known ``P``, where ``grad_x (Q* - V*)`` is exact.

``ModelEnv(TabularDynamics(P))`` is the same rollout code the agent runs on its learned ensemble,
so these tests separate the estimator's own error (Monte Carlo noise, truncation at ``T``) from
model error.
"""

import numpy as np
import pytest
import torch

from agents.msobirl import MSoBiRL
from birl.feedback import SyntheticTeacher
from birl.model_env import EnsembleDynamics, ModelEnv, TabularDynamics, branched_advantage
from birl.tabular import garnet
from envs.termination import termination_rule
from tests.conftest import fast_agent_kwargs, requires


@pytest.fixture(scope="module")
def problem():
    mdp = garnet(6, 3, 4, gamma=0.85, tau=0.6, seed=3, branching=2)
    x = np.random.default_rng(0).normal(size=4)
    return mdp, x


def exact_grads(mdp, x):
    """``grad_x Q*`` ``(S, A, d)`` and ``grad_x V*`` ``(S, d)`` in closed form:
    ``grad Q* = (I - gamma P_pi)^{-1} Phi`` over state-action pairs (the envelope theorem)."""
    S, A = mdp.n_states, mdp.n_actions
    pi = mdp.soft_solve(x).pi
    P_sa = np.einsum("sat,tb->satb", mdp.P, pi).reshape(S * A, S * A)
    dQ = np.linalg.solve(np.eye(S * A) - mdp.gamma * P_sa, mdp.features.reshape(S * A, -1)).reshape(S, A, -1)
    return dQ, np.einsum("sa,sad->sd", pi, dQ)


def truncated_expectation(mdp, x, s, a, T):
    """``E[sum_{t<T} gamma^t phi]`` on the Q rollout minus on the V rollout, computed exactly."""
    S, A = mdp.n_states, mdp.n_actions
    pi = mdp.soft_solve(x).pi
    dq, dv = np.zeros((S, A)), np.zeros((S, A))
    dq[s, a], dv[s] = 1.0, pi[s]
    out = np.zeros(mdp.features.shape[-1])
    for t in range(T):
        out += mdp.gamma**t * np.einsum("sa,sad->d", dq - dv, mdp.features)
        dq, dv = (np.einsum("sa,sat,tb->tb", d, mdp.P, pi) for d in (dq, dv))
    return out


def estimate(mdp, x, s, a, T, n=40_000, seed=0, value_grad=None):
    """The agent's estimator on ``n`` rollout pairs: gradient of the mean ``branched_advantage``."""
    pi = torch.as_tensor(mdp.soft_solve(x).pi)
    feats = torch.as_tensor(mdp.features)
    xt = torch.tensor(x, requires_grad=True)
    gen = torch.Generator().manual_seed(seed)
    policy = lambda o: torch.multinomial(pi[o.long()], 1, generator=gen).squeeze(1)  # noqa: E731
    env = ModelEnv(TabularDynamics(mdp.P), seed=seed)
    starts = torch.full((n,), s, dtype=torch.long)
    q = env.rollout(starts, policy, T, first_actions=torch.full((n,), a, dtype=torch.long))
    v = env.rollout(starts, policy, T)
    reward = lambda o, act, nxt: feats[o.long(), act.long()] @ xt  # noqa: E731
    value_fn = None if value_grad is None else (lambda o: torch.as_tensor(value_grad)[o.long()] @ xt)
    (g,) = torch.autograd.grad(branched_advantage(q, v, reward, mdp.gamma, value_fn).mean(), xt)
    return g.numpy()


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_closed_form_matches_finite_differences(problem):
    mdp, x = problem
    dQ, dV = exact_grads(mdp, x)
    eps = 1e-6
    for i in range(x.size):
        e = np.eye(x.size)[i] * eps
        (Qp, Vp, _), (Qm, Vm, _) = mdp.soft_solve(x + e), mdp.soft_solve(x - e)
        np.testing.assert_allclose((Qp - Qm) / (2 * eps), dQ[..., i], atol=1e-6)
        np.testing.assert_allclose((Vp - Vm) / (2 * eps), dV[..., i], atol=1e-6)


@pytest.mark.parametrize("s, a", [(0, 0), (4, 2)])
def test_long_rollouts_are_unbiased(problem, s, a):
    mdp, x = problem
    dQ, dV = exact_grads(mdp, x)
    exact = dQ[s, a] - dV[s]
    T = int(np.ceil(np.log(1e-4) / np.log(mdp.gamma)))
    assert rel_err(estimate(mdp, x, s, a, T, n=160_000), exact) < 0.05  # Monte Carlo error ~0.02 at this n


def test_truncation_drops_the_tail_and_bootstrapping_restores_it(problem):
    mdp, x = problem
    s, a, T = 2, 1, 2
    dQ, dV = exact_grads(mdp, x)
    exact = dQ[s, a] - dV[s]
    truncated = truncated_expectation(mdp, x, s, a, T)
    assert rel_err(truncated, exact) > 0.2  # the bias this test is about is real here
    # the estimator estimates the truncated quantity, not grad(Q* - V*) ...
    g = estimate(mdp, x, s, a, T)
    assert rel_err(g, truncated) < 0.05
    # ... and with grad V* at the last state it is unbiased again at any T
    for horizon in (1, 2, 3):
        assert rel_err(estimate(mdp, x, s, a, horizon, value_grad=dV, seed=horizon), exact) < 0.05


def test_bootstrapped_tail_skips_terminated_rollouts():
    from birl.model_env import FunctionDynamics

    env = ModelEnv(FunctionDynamics(lambda o, act: (o + act, (o + act)[:, 0] > 1.5)))
    starts = torch.zeros(2, 1)
    q = env.rollout(starts, lambda o: torch.ones_like(o), 2, first_actions=torch.tensor([[2.0], [0.0]]))
    v = env.rollout(starts, lambda o: torch.ones_like(o), 2)
    w = torch.tensor(1.0, requires_grad=True)
    zero = lambda o, act, nxt: 0 * w * o[:, 0]  # noqa: E731
    out = branched_advantage(q, v, zero, 0.5, value_fn=lambda o: w * o[:, 0])
    # row 0 terminated at its first step (state 2): no tail; row 1 ends at state 1; V rows at state 2
    torch.testing.assert_close(out.detach(), torch.tensor([0 - 0.25 * 0.0, 0.25 * 1.0 - 0.25 * 0.0]))
    with pytest.raises(ValueError, match="same length"):
        branched_advantage(q, env.rollout(starts, lambda o: o, 3), zero, 0.5, value_fn=lambda o: o[:, 0])


def test_agent_bootstraps_the_model_estimator_with_its_successor_critic():
    kw = fast_agent_kwargs(rollout_batch_size=64, model_fit_kwargs=dict(max_epochs=2), dynamics_kwargs=dict(hidden=(16, 16)))
    agent = MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), seed=0, branch_bootstrap=True,
                    termination_fn="learned", **kw)  # the learned head, not Pendulum's known rule
    assert agent.estimator == "model" and agent.needs_successor and agent.branch_bootstrap
    agent.learn(250)
    assert agent._successor_updates > 0
    # the bootstrapped tail reaches the reward's last layer only
    obs = torch.as_tensor(agent.replay_buffer.observations[:8, 0])
    act = torch.as_tensor(agent.replay_buffer.actions[:8, 0])
    q, v = agent._branch_rollouts(obs, act)
    # Pendulum never terminates: the barely fitted ensemble's termination head (which does fire
    # here) is ignored, so every branched rollout runs to T and has a tail
    assert not agent._seen_termination and bool((q.alive == 1).all() and (v.alive == 1).all())
    assert EnsembleDynamics(agent.dynamics).step(q.next_obs[-1], q.act[-1], None)[1].any()
    grads = {}
    for flag in (True, False):
        agent.branch_bootstrap = flag
        agent.reward_model.zero_grad()
        agent._model_advantage(q, v, 8).sum().backward()
        grads[flag] = {k: p.grad.clone() for k, p in agent.reward_model.named_parameters()}
    for name in grads[True]:
        same = torch.equal(grads[True][name], grads[False][name])
        assert same != name.startswith("head.weight"), name
    plain = MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(seed=0), seed=0, **fast_agent_kwargs())
    assert not plain.needs_successor and not hasattr(plain, "successor")
    with pytest.raises(ValueError, match="branch_bootstrap"):
        MSoBiRL("MlpPolicy", "Pendulum-v1", feedback=SyntheticTeacher(), estimator="myopic", branch_bootstrap=True)


def test_model_rollouts_end_by_the_envs_known_termination_rule():
    requires("mujoco")
    kw = fast_agent_kwargs(rollout_batch_size=64, dynamics_kwargs=dict(hidden=(16, 16)))
    agent = MSoBiRL("MlpPolicy", "Hopper-v5", feedback=SyntheticTeacher(seed=0), seed=0, **kw)
    rule = agent.termination_rule()
    assert rule is not None and agent.termination_rule() is rule  # looked up once, from the env's spec
    env = agent.model_env(reward=False)
    assert env.termination_fn is rule and not env.dynamics.terminations  # the rule replaces the learned head
    gen = torch.Generator().manual_seed(0)
    start = torch.as_tensor(agent.env.reset(), dtype=torch.float32).repeat(256, 1)
    start = start + 0.3 * torch.randn(start.shape, generator=gen)
    env.reset(start)
    nxt, _, terminated = env.step(torch.zeros(256, 3))
    assert torch.equal(terminated, rule(start, None, nxt)) and terminated.dtype == torch.bool
    assert termination_rule("Hopper-v5")(start, None, start).any()  # some starts are already unhealthy

    learned = MSoBiRL("MlpPolicy", "Hopper-v5", feedback=SyntheticTeacher(seed=0), termination_fn="learned", **kw)
    assert learned.termination_rule() is None
    with pytest.raises(ValueError, match="termination_fn must be 'auto', 'learned' or a callable"):
        MSoBiRL("MlpPolicy", "Hopper-v5", feedback=SyntheticTeacher(seed=0), termination_fn="sometimes")
