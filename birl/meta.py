"""Meta-learned rewards across a family of tabular tasks (seed 004).

Seed 004 ("Generalizing reward modeling for out-of-distribution preference learning", section
3.2) learns ONE reward model that is shared by several task distributions; each task has its own
policy, optimal for the shared reward, and the reward is judged by how well those policies agree
with the task's preferences:

    min_x  L(x) = E_{T ~ D_T} [ f_T(x, pi*_T(x)) ]                                    (eq. 11)
    s.t.   pi*_T(x) = argmax_pi E_pi[ sum_t gamma^t (r_x(s_t, a_t) + tau H(pi(.|s_t))) ] in M_T   (eq. 12)

Here a task ``T`` is a tabular soft MDP (:class:`birl.tabular.TabularMDP`); tasks share the
reward features (so ``r_x`` is the same table in every task) but differ in their transition
kernels ``P_T``.  The inner problem of eq. (12) is the task's soft-optimal policy (seed 003,
"Bilevel RL formulation"; seed 004 solves its own entropy/KL-regularised version in closed
form, eq. (9)).  The outer loss ``f_T`` is any :class:`birl.losses.OuterLoss`; the builders
below use the Bradley-Terry :class:`birl.losses.PreferenceLoss` on segments drawn from
``pi*_T(x)`` and labelled by a teacher on the TRUE reward.  (Seed 004's eq. (7) puts the policy's
log-likelihoods inside the Bradley-Terry model; we keep the library's reward-difference form.)

Because ``L`` is an average, its hypergradient is the average of per-task hypergradients,

    grad L(x) = (1/K) sum_k grad phi_k(x),   phi_k(x) = f_k(x, pi*_k(x)),

each given by :func:`birl.hypergrad.hypergradient` (``exact``, ``msobirl``, ``branch``, ...);
a minibatch of tasks gives an unbiased estimate of the full-batch gradient (seed 004, Algorithm 1
draws one task per outer step).

Also here: the evaluation quantities of the meta benchmark (true discounted return of a policy,
its optimal and uniform-random reference values, the normalised return).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from birl.hypergrad import HypergradResult, hypergradient
from birl._checks import nonempty_list_of
from birl.losses import OuterLoss, PreferenceLoss
from birl.tabular import SoftSolution, TabularMDP, garnet, gridworld

__all__ = [
    "Task",
    "GarnetFamily",
    "gridworld_tasks",
    "MetaObjective",
    "meta_gradient_descent",
    "true_return",
    "optimal_return",
    "normalised_return",
]


# ------------------------------------------------------------------ tasks
@dataclass
class Task:
    """One member of a task family: the MDP the learner sees (reward features ``r_x``), the TRUE
    reward table of its teacher and its outer loss."""

    mdp: TabularMDP
    true_reward: np.ndarray
    loss: OuterLoss
    name: str = ""


class GarnetFamily:
    """Garnet MDPs with shared reward features and a shared true reward, but task-specific
    transition kernels (each task's ``P`` is a fresh garnet draw, :func:`birl.tabular.garnet`).

    The true reward is ``r_true(s, a) = features_all(s, a) @ x_true``.  The learner sees the
    first ``n_features`` columns of ``features_all``; ``n_hidden`` further columns, when > 0, enter
    only the true reward (a misspecified reward class: no ``x`` reproduces ``r_true``).

    Args:
        n_states, n_actions, n_features: sizes of every task.
        gamma, tau: discount and entropy temperature (shared).
        branching: next states reached from each ``(s, a)``.
        n_hidden: true-reward features the learner does not see.
        horizon, beta: segment length and teacher rationality of each task's
            :class:`birl.losses.PreferenceLoss`.
        n_start: segments start uniformly in the first ``n_start`` states (keeps the exact
            enumeration of segment pairs small); ``None`` uses ``rho`` (uniform over states).
        seed: seed of the shared features and ``x_true``; task ``i`` uses its own stream.
    """

    def __init__(
        self,
        n_states: int = 20,
        n_actions: int = 3,
        n_features: int = 6,
        gamma: float = 0.9,
        tau: float = 0.5,
        branching: int = 3,
        n_hidden: int = 0,
        horizon: int = 2,
        beta: float = 1.0,
        n_start: Optional[int] = 4,
        seed: int = 0,
    ) -> None:
        for name, v in (("n_states", n_states), ("n_actions", n_actions), ("n_features", n_features)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(n_hidden, bool) or int(n_hidden) != n_hidden or n_hidden < 0:
            raise ValueError(f"n_hidden must be a non-negative integer, got {n_hidden!r}")
        if n_start is not None and not 1 <= n_start <= n_states:
            raise ValueError(f"n_start must be in [1, n_states={n_states}] or None, got {n_start!r}")
        self.n_states, self.n_actions, self.n_features = int(n_states), int(n_actions), int(n_features)
        self.gamma, self.tau, self.branching = gamma, tau, branching
        self.n_hidden, self.horizon, self.beta, self.seed = int(n_hidden), horizon, beta, seed
        rng = np.random.default_rng([seed, 0])
        d_all = self.n_features + self.n_hidden
        self.features_all = rng.standard_normal((n_states, n_actions, d_all))
        self.x_true = rng.standard_normal(d_all)
        self.features = self.features_all[..., : self.n_features].copy()
        self.true_reward = self.features_all @ self.x_true
        self.start = None
        if n_start is not None:
            self.start = np.zeros(n_states)
            self.start[:n_start] = 1.0 / n_start

    def task(self, index: int) -> Task:
        """Task ``index`` (deterministic): a garnet kernel drawn from seed ``(seed, 1, index)``."""
        if isinstance(index, bool) or int(index) != index or index < 0:
            raise ValueError(f"index must be a non-negative integer, got {index!r}")
        task_seed = int(np.random.SeedSequence([self.seed, 1, int(index)]).generate_state(1)[0])
        P = garnet(self.n_states, self.n_actions, 1, seed=task_seed, branching=self.branching).P
        mdp = TabularMDP(P, self.features, gamma=self.gamma, tau=self.tau)
        loss = PreferenceLoss(self.true_reward, horizon=self.horizon, beta=self.beta, start=self.start)
        return Task(mdp, self.true_reward, loss, name=f"garnet[{index}]")

    def tasks(self, indices: Sequence[int]) -> List[Task]:
        return [self.task(i) for i in indices]


def gridworld_tasks(
    slips: Sequence[float],
    x_true: np.ndarray,
    size: int = 4,
    gamma: float = 0.9,
    tau: float = 0.5,
    horizon: int = 2,
    beta: float = 1.0,
    start: Optional[np.ndarray] = None,
) -> List[Task]:
    """Gridworlds that differ only in their slip probability; one-hot state features are shared
    and the true reward is ``x_true`` (one entry per cell)."""
    x_true = np.asarray(x_true, dtype=np.float64)
    if x_true.shape != (size * size,):
        raise ValueError(f"x_true must have shape ({size * size},), got {x_true.shape}")
    tasks = []
    for slip in slips:
        mdp = gridworld(size, gamma=gamma, tau=tau, slip=slip)
        r_true = mdp.reward(x_true)
        tasks.append(Task(mdp, r_true, PreferenceLoss(r_true, horizon=horizon, beta=beta, start=start), f"slip={slip:g}"))
    return tasks


# ------------------------------------------------------------------ objective
class MetaObjective:
    """``L(x) = (1/K) sum_k f_k(x, pi*_k(x))`` over training tasks (seed 004, eqs. (11)-(12)).

    Args:
        tasks: the training tasks; all must share the outer variable's dimension.
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        tasks = nonempty_list_of(tasks, Task, "tasks")
        d = tasks[0].mdp.n_params
        for i, task in enumerate(tasks):
            if task.mdp.n_params != d:
                raise ValueError(f"every task needs the same number of reward parameters: tasks[{i}] has "
                                 f"{task.mdp.n_params}, tasks[0] has {d}")
            task.loss.validate(task.mdp)
        self.tasks = tasks
        self.n_params = d

    def __len__(self) -> int:
        return len(self.tasks)

    def _indices(self, tasks) -> List[int]:
        if tasks is None:
            return list(range(len(self.tasks)))
        idx = [int(i) for i in np.asarray(tasks).reshape(-1)]
        if not idx or min(idx) < 0 or max(idx) >= len(self.tasks):
            raise ValueError(f"tasks must be indices in [0, {len(self.tasks)}), got {idx}")
        return idx

    def solve(self, x, Q0: Optional[Sequence[np.ndarray]] = None, tol: float = 1e-10) -> List[SoftSolution]:
        """Every task's soft-optimal solution ``pi*_k(x)`` (optionally warm-started)."""
        return [t.mdp.soft_solve(x, tol=tol, Q0=None if Q0 is None else Q0[k]) for k, t in enumerate(self.tasks)]

    def value(self, x, policies: Optional[Sequence[np.ndarray]] = None, tasks=None) -> float:
        """``L(x)`` with exact inner solves (or ``f_k(x, policies[k])`` when policies are given)."""
        idx = self._indices(tasks)
        vals = []
        for k in idx:
            t = self.tasks[k]
            pi = t.mdp.soft_solve(x).pi if policies is None else policies[k]
            vals.append(t.loss(t.mdp, t.mdp.check_x(x), pi))
        return float(np.mean(vals))

    def hypergradient(
        self,
        x,
        method: str = "exact",
        policies: Optional[Sequence[np.ndarray]] = None,
        tasks=None,
        rng: Union[None, int, np.random.Generator] = None,
        **options,
    ) -> HypergradResult:
        """``(1/|B|) sum_{k in B} grad phi_k(x)``, each term by :func:`birl.hypergrad.hypergradient`.

        Args:
            x: the shared reward parameters.
            method: estimator of every per-task hypergradient.
            policies: per-task policies to use instead of ``pi*_k(x)`` (warm-started inner levels).
            tasks: indices of the batch ``B`` (default: every task).
            rng: seed or generator shared by the sampled estimators of the batch.
            **options: passed to every per-task call.
        """
        idx = self._indices(tasks)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        results = []
        for k in idx:
            t = self.tasks[k]
            pi = None if policies is None else policies[k]
            results.append(hypergradient(t.mdp, x, t.loss, method, pi=pi, rng=rng, **options))
        grad = np.mean([r.grad for r in results], axis=0)
        value = float(np.mean([r.value for r in results]))
        return HypergradResult(grad, value, method, {"tasks": idx, "per_task": results})

    def partial_gradient(self, x, policies: Sequence[np.ndarray], tasks=None) -> np.ndarray:
        """``(1/|B|) sum_k grad_x f_k(x, pi_k)`` with the policies held fixed: the first term of the
        hypergradient only (the direction of DRLHF, seed 003 "Third visit to hyper-gradient")."""
        idx = self._indices(tasks)
        xt = torch.tensor(self.tasks[idx[0]].mdp.check_x(x), dtype=torch.float64, requires_grad=True)
        total = 0.0
        for k in idx:
            t = self.tasks[k]
            total = total + t.loss.value(t.mdp, xt, torch.as_tensor(np.asarray(policies[k], dtype=np.float64)))
        (g,) = torch.autograd.grad(total / len(idx), xt)
        return g.numpy()


def meta_gradient_descent(
    objective: MetaObjective,
    x0,
    lr: float = 1.0,
    n_steps: int = 100,
    method: str = "exact",
    batch_size: Optional[int] = None,
    seed: Optional[int] = None,
    **options,
) -> dict:
    """Meta-SoBiRL: ``x_{k+1} = x_k - lr * mean_{T in B_k} grad phi_T(x_k)`` with warm-started inner
    solves ``pi*_T(x_k)`` (soft policy iteration from the previous ``Q``) and, when ``batch_size``
    is given, a fresh uniform minibatch ``B_k`` of training tasks per step (seed 004, Algorithm 1).

    Returns ``{"x": final x, "xs": iterates, "values": L(x_k) on the batch at each step}``.
    """
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer, got {n_steps!r}")
    K = len(objective)
    if batch_size is not None and not 1 <= batch_size <= K:
        raise ValueError(f"batch_size must be in [1, {K}] or None, got {batch_size!r}")
    rng = np.random.default_rng(seed)
    x = objective.tasks[0].mdp.check_x(x0, "x0").copy()
    Q = [None] * K
    xs, values = [x.copy()], []
    for _ in range(int(n_steps)):
        batch = np.arange(K) if batch_size is None else rng.choice(K, size=batch_size, replace=False)
        pis = [None] * K
        for k in batch:
            sol = objective.tasks[k].mdp.soft_solve(x, Q0=Q[k])
            Q[k], pis[k] = sol.Q, sol.pi
        res = objective.hypergradient(x, method, policies=pis, tasks=batch, rng=rng, **options)
        values.append(res.value)
        x = x - lr * res.grad
        xs.append(x.copy())
    return {"x": x, "xs": xs, "values": values}


# ------------------------------------------------------------------ evaluation
def true_return(mdp: TabularMDP, pi: np.ndarray, true_reward: np.ndarray) -> float:
    """Expected discounted TRUE return of ``pi`` from ``rho``, without entropy bonus:
    ``rho^T (I - gamma P_pi)^{-1} sum_a pi(a|s) r_true(s, a)``."""
    pi = np.asarray(pi, dtype=np.float64)
    b = (pi * np.asarray(true_reward, dtype=np.float64)).sum(1)
    V = np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * mdp.P_pi(pi), b)
    return float(mdp.rho @ V)


def optimal_return(mdp: TabularMDP, true_reward: np.ndarray, tol: float = 1e-10, max_iter: int = 100_000) -> float:
    """``max_pi`` of :func:`true_return` (hard, unregularised optimum) by value iteration."""
    r = np.asarray(true_reward, dtype=np.float64)
    V = np.zeros(mdp.n_states)
    for _ in range(max_iter):
        V_new = (r + mdp.gamma * mdp.P @ V).max(1)
        if np.abs(V_new - V).max() <= tol:
            V = V_new
            break
        V = V_new
    return float(mdp.rho @ V)


def normalised_return(mdp: TabularMDP, pi: np.ndarray, true_reward: np.ndarray) -> float:
    """``(R(pi) - R(uniform)) / (R(pi_opt) - R(uniform))``: 0 for the uniform policy, 1 for the
    optimal one (all TRUE-reward returns, :func:`true_return`)."""
    uniform = np.full((mdp.n_states, mdp.n_actions), 1.0 / mdp.n_actions)
    r_rand = true_return(mdp, uniform, true_reward)
    r_opt = optimal_return(mdp, true_reward)
    if r_opt - r_rand <= 1e-12:
        raise ValueError("the optimal and the uniform policy have the same true return: normalisation undefined")
    return (true_return(mdp, pi, true_reward) - r_rand) / (r_opt - r_rand)
