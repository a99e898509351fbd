"""Benchmarks: ``python -m agents.benchmark tabular [--outer-steps K] [--seed S] [--out DIR]``.

``tabular`` runs the outer loops of :mod:`birl.solvers` (SoBiRL, M-SoBiRL, Stoc-SoBiRL, DRLHF,
PBRL, HPGD) from the same ``x0 = 0`` on a garnet and a gridworld, each with two outer losses
whose data come from a hidden ``x_true``:

* ``demonstrations``: ML-IRL loss ``-sum d_E(s, a) log pi*_x(a|s)`` with ``d_E`` the occupancy of
  the expert ``pi*(x_true)`` (seed 002);
* ``preferences``: Bradley-Terry loss on pairs of horizon-2 segments drawn from ``pi*(x)``, labels
  from the true reward (RLHF; seed 003 "Bilevel RL formulation").  Segments start from two
  states so that exact enumeration (and so the exact ``phi``) stays small.

It writes ``DIR/tabular.md`` (one table per problem and loss, the bias of the ``myopic``
estimator as ``gamma`` grows, the time of one exact hypergradient) and ``DIR/tabular_phi.png``.
``--tune`` first picks every method's step size on a grid (``DIR/tabular_tuning.md``).
The other suites (:data:`SUITES`) live in ``agents/bench_*.py``; ``python -m agents.benchmark -h``
lists them.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import import_module
from typing import Dict, List, Optional, Sequence, Tuple, Type

if __name__ == "__main__":
    # CLI run: the problems are tiny and thread pools only add latency (on a 2-core VM a 200x200
    # np.linalg.solve took ~120 ms with two OpenBLAS threads and 0.3 ms with one).  This must
    # happen before numpy loads; explicit settings of the user win.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np
import torch

from birl.hypergrad import hypergradient
from birl.losses import DemonstrationNLL, OuterLoss, PreferenceLoss
from birl.solvers import DRLHF, HPGD, PBRL, BilevelSolver, MSoBiRL, SoBiRL, StocSoBiRL
from birl.tabular import TabularMDP, garnet, gridworld

GAMMAS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)
LR_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)
INNER_STEPS = 10
NOT_YET: tuple = ()

#: ``suite: (module in agents/, its add-arguments function, its run function, help)``; a run
#: function takes ``(args)`` or ``(args, command)`` (the command line, for the report).
SUITES: Dict[str, Tuple[str, str, str, str]] = {
    "pendulum": ("bench_pendulum", "add_arguments", "run_pendulum", "SoBiRL / DRLHF / SAC on Pendulum-v1 (issue 5 targets)"),
    "model-based": ("bench_model_based", "add_arguments", "run_model_based", "M-SoBiRL vs SoBiRL vs DRLHF (issue 7 targets)"),
    "mujoco": ("bench_zoo", "add_mujoco_arguments", "run_mujoco", "SoBiRL / DRLHF / SAC on MuJoCo through rl_zoo3 (needs .[zoo,mujoco])"),
    "atari": ("bench_zoo", "add_atari_arguments", "run_atari", "SoBiRL / DRLHF / SAC on Atari through rl_zoo3 (needs .[zoo,atari])"),
    "meta-tabular": ("bench_meta", "add_arguments", "run_meta_tabular", "meta-learned reward across garnet tasks (seed 004) + joint demo/pref loss (seed 002)"),
    "meta-pendulum": ("bench_meta_pendulum", "add_arguments", "run_meta_pendulum", "meta-learned reward across Pendulum-v1 variants, held-out variants (seed 004)"),
    "offline": ("bench_offline", "add_arguments", "run_offline", "offline ML-IRL (world model) vs behaviour cloning on Pendulum-v1"),
    "world-model": ("bench_world_model", "add_arguments", "run_world_model", "Pendulum-v1 dynamics: bilevel SoftWorldModel (seed 001) vs NLL"),
    "joint": ("bench_joint", "add_arguments", "run_joint", "joint demonstrations + preferences (AIHF, seed 002) vs each alone and BC, Pendulum-v1"),
}


# ------------------------------------------------------------------ problems
@dataclass
class Problem:
    """A soft MDP with a hidden true reward parameter and the two outer losses built from it."""

    name: str
    mdp: TabularMDP
    x_true: np.ndarray
    start: np.ndarray  # start distribution of the preference segments
    expert_pi: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.expert_pi = self.mdp.soft_solve(self.x_true).pi

    def losses(self) -> Dict[str, OuterLoss]:
        return {
            "demonstrations": DemonstrationNLL.from_expert(self.mdp, self.expert_pi),
            "preferences": PreferenceLoss(self.mdp.reward(self.x_true), horizon=2, start=self.start),
        }


def _two_point(n_states: int, states: Sequence[int]) -> np.ndarray:
    start = np.zeros(n_states)
    start[list(states)] = 1.0 / len(states)
    return start


def garnet_problem(seed: int = 0, gamma: float = 0.9, n_states: int = 50, n_actions: int = 4, n_features: int = 8) -> Problem:
    """Garnet ``S=50, A=4, d=8``, ``tau = 1``, ``x_true ~ N(0, I)``; segments start in states 0 and 1.
    The transitions and features do not depend on ``gamma`` (same seed, same draws)."""
    mdp = garnet(n_states, n_actions, n_features, gamma=gamma, tau=1.0, seed=seed)
    x_true = np.random.default_rng(seed + 1).standard_normal(n_features)
    return Problem("garnet", mdp, x_true, _two_point(n_states, (0, 1)))


def gridworld_problem(size: int = 5) -> Problem:
    """``size x size`` gridworld, slip 0.1, ``tau = 0.5``, ``gamma = 0.9``, start in the corner
    ``(0, 0)``; true state reward +1 in the opposite corner and -1 in three pits; segments start
    in ``(0, 0)`` and in the centre."""
    mdp = gridworld(size, gamma=0.9, tau=0.5, slip=0.1, start=(0, 0))
    x_true = np.zeros(size * size)
    x_true[-1] = 1.0
    for row, col in ((1, 1), (2, 3), (3, 1)):
        x_true[row * size + col] = -1.0
    centre = (size // 2) * size + size // 2
    return Problem("gridworld", mdp, x_true, _two_point(size * size, (0, centre)))


# ------------------------------------------------------------------ methods
@dataclass
class Method:
    """A solver class with its fixed options; the step size comes from :data:`LEARNING_RATES`."""

    label: str
    cls: Type[BilevelSolver]
    options: dict = field(default_factory=dict)


METHODS = (
    Method("SoBiRL", SoBiRL, {"method": "exact"}),
    Method("M-SoBiRL", MSoBiRL, {"w_iters": 1}),
    Method("M-SoBiRL (10 w-steps)", MSoBiRL, {"w_iters": 10}),
    Method("Stoc-SoBiRL", StocSoBiRL, {"mu": 0.5, "n_samples": 256}),
    Method("DRLHF", DRLHF),
    Method("PBRL", PBRL, {"lam": 1.0, "policy_lr": 1.0}),
    Method("HPGD", HPGD, {"n_samples": 10, "n_rollouts": 1}),
)

#: (problem, loss) columns of :data:`_TUNED_LR`.
SETTINGS = (("garnet", "demonstrations"), ("garnet", "preferences"), ("gridworld", "demonstrations"), ("gridworld", "preferences"))

#: Step sizes picked by ``--tune`` (lowest final phi after 100 outer steps, seed 0, grid LR_GRID),
#: one per column of :data:`SETTINGS`.
_TUNED_LR = {
    "SoBiRL": (1.0, 1.0, 3.0, 3.0),
    "M-SoBiRL": (0.1, 0.03, 0.03, 1.0),
    "M-SoBiRL (10 w-steps)": (0.3, 0.03, 0.03, 3.0),
    "Stoc-SoBiRL": (0.1, 0.1, 0.3, 3.0),
    "DRLHF": (0.03, 0.03, 0.03, 0.1),
    "PBRL": (0.3, 0.1, 1.0, 1.0),
    "HPGD": (1.0, 0.1, 0.3, 3.0),
}
LEARNING_RATES: Dict[Tuple[str, str], Dict[str, float]] = {
    setting: {method: lrs[i] for method, lrs in _TUNED_LR.items()} for i, setting in enumerate(SETTINGS)
}


@dataclass
class RunResult:
    method: str
    lr: float
    phi: List[float]
    policy_distance: float
    hypergrad_evals: int
    ms_per_step: float
    accuracy: Optional[float]


def run_method(problem: Problem, loss: OuterLoss, method: Method, lr: float, outer_steps: int, seed: int) -> RunResult:
    """Run one solver from ``x0 = 0`` and summarise its history."""
    x0 = np.zeros(problem.mdp.n_params)
    solver = method.cls(problem.mdp, loss, x0, lr=lr, inner_steps=INNER_STEPS, seed=seed, **method.options)
    history: List[dict] = []
    try:
        solver.run(outer_steps, callback=lambda _, record: history.append(record), expert_pi=problem.expert_pi)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):  # the iterates diverged
        pass
    last = history[-1]
    diverged = len(history) < outer_steps + 1
    accuracy = None
    if isinstance(loss, PreferenceLoss) and not diverged:
        accuracy = loss.accuracy(problem.mdp, solver.x, problem.mdp.soft_solve(solver.x).pi)
    return RunResult(
        method=method.label,
        lr=lr,
        phi=[float(r["phi"]) for r in history] + [np.inf] * (outer_steps + 1 - len(history)),
        policy_distance=float(last["policy_distance"]),
        hypergrad_evals=int(last["hypergrad_evals"]),
        ms_per_step=1e3 * (last["wall_time"] - history[0]["wall_time"]) / max(1, len(history) - 1),
        accuracy=accuracy,
    )


def _safe_final(result: RunResult) -> float:
    final = result.phi[-1]
    return final if np.isfinite(final) else np.inf


def tune(problem: Problem, loss_name: str, loss: OuterLoss, outer_steps: int, seed: int) -> Dict[str, List[Tuple[float, float]]]:
    """Final phi of every method at every step size of :data:`LR_GRID` (diverged runs: inf)."""
    table: Dict[str, List[Tuple[float, float]]] = {}
    for method in METHODS:
        rows = [(lr, _safe_final(run_method(problem, loss, method, lr, outer_steps, seed))) for lr in LR_GRID]
        table[method.label] = rows
    return table


# ------------------------------------------------------------------ side studies
def myopic_bias(seed: int, n_points: int = 5) -> List[Tuple[float, Dict[str, Tuple[float, float]]]]:
    """Cosine similarity and relative error of the ``myopic`` against the ``exact``
    hypergradient on the garnet, for each gamma of :data:`GAMMAS`, averaged over random ``x``."""
    xs = np.random.default_rng(seed + 100).standard_normal((n_points, 8))
    rows = []
    for gamma in GAMMAS:
        problem = garnet_problem(seed, gamma=gamma)
        stats = {}
        for name, loss in problem.losses().items():
            cos, rel = [], []
            for x in xs:
                pi = problem.mdp.soft_solve(x).pi
                exact = hypergradient(problem.mdp, x, loss, "exact", pi=pi).grad
                myopic = hypergradient(problem.mdp, x, loss, "myopic", pi=pi).grad
                cos.append(exact @ myopic / (np.linalg.norm(exact) * np.linalg.norm(myopic)))
                rel.append(np.linalg.norm(myopic - exact) / np.linalg.norm(exact))
            stats[name] = (float(np.mean(cos)), float(np.mean(rel)))
        rows.append((gamma, stats))
    return rows


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def exact_timing(seed: int, repeats: int = 20) -> Tuple[float, float]:
    """Median ms of one ``exact`` hypergradient (given ``pi``) and of one ``soft_solve`` on a
    garnet ``S=200, A=8, d=16`` with the demonstration loss."""
    mdp = garnet(200, 8, 16, gamma=0.9, tau=1.0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    loss = DemonstrationNLL.from_expert(mdp, mdp.soft_solve(rng.standard_normal(16)).pi)
    x = rng.standard_normal(16)
    pi = mdp.soft_solve(x).pi
    grad_ms = _median_ms(lambda: hypergradient(mdp, x, loss, "exact", pi=pi), repeats)
    solve_ms = _median_ms(lambda: mdp.soft_solve(x), repeats)
    return grad_ms, solve_ms


# ------------------------------------------------------------------ reporting
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; Python "
        f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} torch thread, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})"
    )


def _fmt(v: Optional[float], spec: str = ".4f") -> str:
    if v is None:
        return "-"
    if not np.isfinite(v) or abs(v) > 1e6:
        return "diverged"
    return format(v, spec)


def results_table(problem: Problem, loss_name: str, loss: OuterLoss, results: List[RunResult]) -> List[str]:
    mdp = problem.mdp
    phi_true = loss(mdp, problem.x_true, problem.expert_pi)
    acc = isinstance(loss, PreferenceLoss)
    lines = [
        f"### {problem.name} (S={mdp.n_states}, A={mdp.n_actions}, d={mdp.n_params}, gamma={mdp.gamma}, "
        f"tau={mdp.tau}), {loss_name}",
        "",
        f"phi(x0) = {results[0].phi[0]:.4f}, phi(x_true) = {phi_true:.4f}.",
        "",
        "| method | lr | final phi | best phi | policy TV to expert | hypergrad evals | ms / outer step |"
        + (" pref. accuracy |" if acc else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if acc else ""),
    ]
    for r in results:
        row = (
            f"| {r.method} | {r.lr:g} | {_fmt(r.phi[-1])} | {_fmt(min(r.phi))} | {r.policy_distance:.3f} "
            f"| {r.hypergrad_evals} | {r.ms_per_step:.2f} |"
        )
        lines.append(row + (f" {_fmt(r.accuracy, '.3f')} |" if acc else ""))
    return lines + [""]


def bias_table(rows) -> List[str]:
    lines = [
        "### Bias of the `myopic` estimator (garnet S=50, A=4, d=8, tau=1; mean over 5 random x, pi = pi*(x))",
        "",
        "| gamma | cos (demonstrations) | rel. error (demonstrations) | cos (preferences) | rel. error (preferences) |",
        "|---|---|---|---|---|",
    ]
    for gamma, stats in rows:
        d, p = stats["demonstrations"], stats["preferences"]
        lines.append(f"| {gamma:g} | {d[0]:.3f} | {d[1]:.3f} | {p[0]:.3f} | {p[1]:.3f} |")
    return lines + [""]


def tuning_markdown(tuning: Dict[Tuple[str, str], Dict[str, List[Tuple[float, float]]]], steps: int, command: str) -> str:
    lines = [f"# Step-size tuning ({steps} outer steps, final phi; chosen: lowest)", "", f"Produced by `{command}`.", ""]
    for (problem, loss), table in tuning.items():
        lines += [f"## {problem}, {loss}", "", "| method | " + " | ".join(f"lr={lr:g}" for lr in LR_GRID) + " |",
                  "|---|" + "---|" * len(LR_GRID)]
        lines += [f"| {m} | " + " | ".join(_fmt(v) for _, v in rows) + " |" for m, rows in table.items()]
        lines.append("")
    return "\n".join(lines)


def plot_phi(path: str, curves: Dict[Tuple[str, str], Tuple[List[RunResult], float]]) -> None:
    """phi versus outer steps: one subplot per problem (rows) and loss (columns), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(problem for problem, _ in curves))
    losses = list(dict.fromkeys(loss for _, loss in curves))
    fig, axes = plt.subplots(len(problems), len(losses), figsize=(5.0 * len(losses), 3.8 * len(problems)), squeeze=False)
    for (problem, loss), (results, phi_true) in curves.items():
        ax = axes[problems.index(problem)][losses.index(loss)]
        for r in results:
            phi = np.asarray(r.phi)
            ax.plot(np.arange(phi.size), np.where(np.isfinite(phi), phi, np.nan), label=r.method, lw=1.3)
        ax.axhline(phi_true, color="k", ls=":", lw=1, label="phi(x_true)")
        top = max(r.phi[0] for r in results)
        ax.set_ylim(min(min(r.phi) for r in results) - 0.02 * top, 1.15 * top)
        ax.set_title(f"{problem}, {loss}", fontsize=10)
        ax.set_xlabel("outer step")
        ax.set_ylabel("phi(x_k)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ commands
def tabular(args: argparse.Namespace, command: str) -> int:
    """The tabular suite (see the module docstring)."""
    # The tensors here are tiny; a single torch thread avoids thread-pool overheads (with two
    # threads F.logsigmoid took ~12 ms per call on a 2-core machine, torch 2.13).
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    problems = (garnet_problem(args.seed), gridworld_problem())
    learning_rates = {key: dict(v) for key, v in LEARNING_RATES.items()}
    tuning = {}
    if args.tune:
        for problem in problems:
            for loss_name, loss in problem.losses().items():
                table = tune(problem, loss_name, loss, args.outer_steps, args.seed)
                tuning[(problem.name, loss_name)] = table
                learning_rates[(problem.name, loss_name)] = {m: min(rows, key=lambda t: t[1])[0] for m, rows in table.items()}
        with open(os.path.join(args.out, "tabular_tuning.md"), "w") as fh:
            fh.write(tuning_markdown(tuning, args.outer_steps, command))

    sections, curves = [], {}
    for problem in problems:
        for loss_name, loss in problem.losses().items():
            lrs = learning_rates[(problem.name, loss_name)]
            results = [run_method(problem, loss, m, lrs[m.label], args.outer_steps, args.seed) for m in METHODS]
            sections += results_table(problem, loss_name, loss, results)
            curves[(problem.name, loss_name)] = (results, loss(problem.mdp, problem.x_true, problem.expert_pi))
            print(f"done: {problem.name}, {loss_name} ({time.perf_counter() - start:.0f} s)", flush=True)
    bias = myopic_bias(args.seed)
    grad_ms, solve_ms = exact_timing(args.seed)
    total = time.perf_counter() - start

    plot_phi(os.path.join(args.out, "tabular_phi.png"), curves)
    header = [
        "# Tabular benchmark of the soft bilevel RL solvers",
        "",
        f"Produced by `{command}` in {total:.0f} s on: {machine()}.",
        "",
        f"All methods start from x0 = 0 with the same budget of {args.outer_steps} outer steps and "
        f"N = {INNER_STEPS} warm-started soft Bellman steps per outer step (`birl.solvers`). "
        "phi(x_k) = f(x_k, pi*(x_k)) is exact (soft policy iteration), computed for reporting only "
        "and excluded from the timings. Policy TV = mean over states of the total-variation "
        "distance between the method's policy and the expert pi*(x_true) (final step). "
        "'hypergrad evals' counts calls of `birl.hypergrad.hypergradient` (DRLHF and PBRL use none). "
        "'ms / outer step' is the algorithm's own time. 'pref. accuracy': agreement of the learned "
        "reward with the teacher on segment pairs drawn from pi*(x_K).",
        "",
        "Settings: SoBiRL uses the `exact` estimator; M-SoBiRL follows the slide (one w step per "
        "outer step, xi = 1/||A_0||^2, w_0 by one least-squares solve), the 10 w-step row is an "
        "ablation; Stoc-SoBiRL uses the `branch` estimator with 256 samples and STORM mu = 0.5 "
        "(two estimator calls per step, common random numbers); HPGD ('in the spirit of' Thoma et "
        "al. 2024) is SGD with a 10-sample `branch` estimate and lr/sqrt(k); PBRL has lambda = 1 and "
        "policy step 1 on softmax logits (N logit steps per outer step); DRLHF ignores d pi / dx, so "
        "on the demonstration loss (which depends on x only through pi) it never moves. Step sizes: "
        f"the best final phi over lr in {list(LR_GRID)} after 100 outer steps at seed 0 "
        "(`--tune` redoes this and writes tabular_tuning.md); tuned and reported on the same seed.",
        "",
        "Reading the tables: on the preference loss phi(x_true) is not the minimum of phi, since f "
        "also depends on which segments pi*(x) generates (pairs with clear-cut labels cost less), so "
        "a low phi can come with a policy farther from the expert. M-SoBiRL's single w step per outer "
        "step contracts the error in w only by 1 - 1/cond(I - gamma P_pi)^2; w lags its target and "
        "the method needs a small lr (see `birl.solvers.MSoBiRL`).",
        "",
        "![phi versus outer steps](tabular_phi.png)",
        "",
    ]
    footer = bias_table(bias) + [
        "### Timing",
        "",
        f"One `exact` hypergradient on a garnet S=200, A=8, d=16 with the demonstration loss, pi given: "
        f"{grad_ms:.2f} ms (median of 20 calls); one `soft_solve` there: {solve_ms:.2f} ms.",
        "",
    ]
    with open(os.path.join(args.out, "tabular.md"), "w") as fh:
        fh.write("\n".join(header + sections + footer))
    print(f"wrote {os.path.join(args.out, 'tabular.md')} and tabular_phi.png in {total:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agents.benchmark", description="Benchmarks of the soft bilevel RL solvers.")
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    tab = sub.add_parser("tabular", help="tabular outer loops on a garnet and a gridworld")
    tab.add_argument("--outer-steps", type=int, default=100, help="outer steps per method (default 100)")
    tab.add_argument("--seed", type=int, default=0, help="seed of the garnet, x_true and solvers (default 0)")
    tab.add_argument("--out", default="benchmark", help="output folder (default ./benchmark)")
    tab.add_argument("--tune", action="store_true", help="pick step sizes on a grid first (about 5x longer)")
    for name, (module, add, _, help_text) in SUITES.items():
        getattr(import_module(f"agents.{module}"), add)(sub.add_parser(name, help=help_text))
    for name in NOT_YET:
        sub.add_parser(name, help="not implemented yet")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.suite in NOT_YET:
        print(f"error: the '{args.suite}' benchmark is not implemented yet.", file=sys.stderr)
        return 2
    if args.suite in SUITES:
        module, _, run, _ = SUITES[args.suite]
        runner = getattr(import_module(f"agents.{module}"), run)
        command = " ".join(["python -m agents.benchmark", *argv])
        out = runner(args, command) if "command" in inspect.signature(runner).parameters else runner(args)
        return out if isinstance(out, int) else 0
    if args.outer_steps < 1:
        parser.error(f"--outer-steps must be >= 1, got {args.outer_steps}")
    return tabular(args, " ".join(["python -m agents.benchmark", *argv]))


if __name__ == "__main__":
    sys.exit(main())
