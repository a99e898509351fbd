"""Joint demonstrations + preferences (AIHF, seed 002) on Pendulum-v1, at equal label budgets.

    python -m agents.benchmark joint [--steps 10000] [--seeds 2] [--queries 200] [--demos 2]

One budget, spent three ways, plus behaviour cloning:

* ``preferences``: SoBiRL with ``--queries`` synthetic preferences (noiseless teacher, TRUE reward);
* ``demonstrations``: SoBiRL (ML-IRL loss) with ``--demos`` expert trajectories;
* ``joint``: SoBiRL on ``L_demo + pref_weight * L_pref`` with half of each (``--demos / 2``
  trajectories and ``--queries / 2`` preferences);
* ``bc``: :class:`agents.bc.BehaviourCloning` on the ``--demos`` trajectories.

The exchange rate is an assumption, stated in the report: one expert trajectory (200 steps)
counts as ``--queries / --demos`` preference labels.  The expert (SB3 SAC on the TRUE reward) and
its deterministic demonstrations are shared with ``python -m agents.benchmark offline``
(``<out>/offline_runs/``).  Every run writes ``<out>/joint_runs/<method>_seed<k>_<settings>.json`` and is not
redone; the report ``<out>/joint.md`` gives TRUE return (10 deterministic episodes), the
normalised score ``(R - R_random) / (R_expert - R_random)`` and held-out preference accuracy of
the learned reward (good-to-random rollouts, as in the Pendulum benchmark); ``joint.png`` plots the
normalised scores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict

import numpy as np

from agents.reports import write_record, write_report

ENV_ID = "Pendulum-v1"
METHODS = ("preferences", "demonstrations", "joint", "bc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=10_000, help="env steps per SoBiRL run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200, help="preference labels of the preferences-only run")
    parser.add_argument("--demos", type=int, default=2, help="expert trajectories of the demonstrations-only run (even)")
    parser.add_argument("--pref-weight", default="1", help="lambda of the joint loss; a comma-separated list runs one joint run per value")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--out", default="benchmark")


def _feedback(method: str, demos, queries: int, n_demos: int, seed: int):
    from birl.feedback import Demonstrations, SyntheticTeacher

    if method == "preferences":
        return SyntheticTeacher(seed=seed), queries
    if method == "demonstrations":
        return Demonstrations(demos.trajectories[:n_demos]), 1
    return [Demonstrations(demos.trajectories[: n_demos // 2]), SyntheticTeacher(seed=seed)], queries // 2


def _run(method: str, seed: int, args: Dict, demos, path: str) -> Dict:
    """One run in a fresh process; returns (and writes) its record."""
    import gymnasium as gym
    import torch as th

    from agents.bench_offline import evaluate
    from agents.quickstart import MIXED_NOISE, heldout_preference_accuracy

    th.set_num_threads(1)
    start = time.perf_counter()
    if method == "bc":
        from agents.bc import BehaviourCloning
        from birl.feedback import Demonstrations

        env = gym.make(ENV_ID)
        model = BehaviourCloning(env.observation_space, env.action_space, seed=seed)
        model.fit(Demonstrations(demos.trajectories[: args["demos"]]))
        accuracy, labels = None, 0
    else:
        from agents.sobirl import SoBiRL

        feedback, n_queries = _feedback(method, demos, args["queries"], args["demos"], seed)
        model = SoBiRL("MlpPolicy", gym.make(ENV_ID), feedback=feedback, n_queries=n_queries, pref_weight=args.get("pref_weight", 1.0),
                       outer_freq=1000, learning_starts=1000, reward_steps=200, seed=seed, verbose=0)
        model.learn(args["steps"])
        accuracy = heldout_preference_accuracy(model, ENV_ID, noise=MIXED_NOISE)
        labels = len(model.preferences)
    returns = evaluate(model, ENV_ID)
    record = {"method": method, "seed": seed, "true_return": float(np.mean(returns)), "returns": returns,
              "mixed_pref_accuracy": accuracy, "labels": labels, "wall_s": time.perf_counter() - start, "settings": args}
    write_record(path, record)
    return record


def _plot(by_row: Dict[str, list], r_exp: float, r_rand: float, path: Path) -> None:
    """Normalised TRUE return per method: one dot per seed, a bar for the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, records in enumerate(by_row.values()):
        scores = [(r["true_return"] - r_rand) / (r_exp - r_rand) for r in records]
        ax.bar(i, np.mean(scores), color=f"C{i}", alpha=0.5)
        ax.scatter([i] * len(scores), scores, color=f"C{i}", zorder=3)
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.axhline(0.0, color="gray", ls=":", lw=0.8)
    ax.set_xticks(range(len(by_row)), [label.replace(" (", "\n(") for label in by_row], fontsize=8)
    ax.set(ylabel="normalised TRUE return", title=f"{ENV_ID}: equal label budgets")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_joint(args: argparse.Namespace, command: str) -> str:
    from agents.bench_offline import expert_and_demos

    methods = [m for m in args.methods.split(",") if m]
    if not set(methods) <= set(METHODS):
        raise ValueError(f"--methods: unknown {sorted(set(methods) - set(METHODS))}; choose from {METHODS}")
    if args.demos < 2 or args.demos % 2:
        raise ValueError(f"--demos must be an even number >= 2 (the joint run gets half), got {args.demos}")
    if args.queries < 2 or args.queries % 2:
        raise ValueError(f"--queries must be an even number >= 2 (the joint run gets half), got {args.queries}")
    out = Path(args.out)
    runs = out / "joint_runs"
    runs.mkdir(parents=True, exist_ok=True)
    ref = expert_and_demos(ENV_ID, out / "offline_runs", expert_steps=15_000, max_demos=max(10, args.demos))
    try:
        weights = [float(w) for w in str(args.pref_weight).split(",") if w]
    except ValueError as err:
        raise ValueError(f"--pref-weight must be numbers separated by commas, got {args.pref_weight!r}") from err
    if not weights or min(weights) < 0:
        raise ValueError(f"--pref-weight must be non-negative numbers, got {args.pref_weight!r}")
    common = {"steps": args.steps, "queries": args.queries, "demos": args.demos}
    # (row label, method, settings): one joint row per pref_weight; settings name the run's file
    rows = [(f"joint (pref_weight={w:g})", m, {**common, "pref_weight": w}) for m in methods if m == "joint" for w in weights]
    rows = [(m, m, common) for m in methods if m != "joint"] + rows
    rows.sort(key=lambda row: METHODS.index(row[1]))
    path = lambda m, seed, st: runs / (f"{m}_seed{seed}_" + "_".join(f"{k}{v:g}" for k, v in st.items()) + ".json")  # noqa: E731
    jobs = [(m, seed, st, ref["demos"], str(path(m, seed, st))) for seed in range(args.seeds) for _, m, st in rows
            if not path(m, seed, st).exists()]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rec in pool.map(_run, *zip(*jobs)) if jobs else []:
            print(f"done {rec['method']} seed {rec['seed']}: TRUE return {rec['true_return']:.1f}, {rec['wall_s']:.0f} s", flush=True)
    by_row = {label: [read_record(path(m, seed, st)) for seed in range(args.seeds)] for label, m, st in rows}
    r_exp, r_rand = float(np.mean(ref["expert"])), float(np.mean(ref["random"]))
    rate = args.queries / args.demos
    budget = {"preferences": f"{args.queries} preferences", "demonstrations": f"{args.demos} trajectories",
              "joint": f"{args.demos // 2} trajectories + {args.queries // 2} preferences", "bc": f"{args.demos} trajectories"}
    lines = [
        f"# Joint demonstrations + preferences (AIHF) on {ENV_ID}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, one torch thread per run, "
        f"{args.workers} runs in parallel.  SoBiRL (successor estimator), {args.steps} env steps, outer step every 1000 steps "
        f"with 200 reward steps.  Label budget: one expert trajectory (200 steps) counts as "
        f"{rate:g} preference labels (an assumption).  Expert: SB3 SAC on the TRUE reward, R_expert = {r_exp:.1f}; "
        f"R_random = {r_rand:.1f}.",
        "",
        "| method | feedback | TRUE return (mean +- std over seeds) | normalised score | held-out pref. accuracy (good-to-random rollouts) |",
        "|---|---|---|---|---|",
    ]
    for label, m, _ in rows:
        rs = by_row[label]
        R = np.array([r["true_return"] for r in rs])
        score = (R - r_rand) / (r_exp - r_rand)
        acc = [r["mixed_pref_accuracy"] for r in rs if r["mixed_pref_accuracy"] is not None]
        lines.append(f"| {label} | {budget[m]} | {R.mean():.1f} +- {R.std():.1f} (n={len(R)}) | {score.mean():.2f} +- {score.std():.2f} | "
                     + (f"{np.mean(acc):.3f} +- {np.std(acc):.3f} |" if acc else "- |"))
    lines += ["", "TRUE return: 10 deterministic episodes of the final policy (the same evaluation seeds as the offline "
              "benchmark).  BC has no reward model, so no preference accuracy."]
    lines += ["", "![normalised TRUE return](joint.png)"]
    report = "\n".join(lines)
    write_report(out / "joint.md", report)
    _plot(by_row, r_exp, r_rand, out / "joint.png")
    print(report)
    return report
