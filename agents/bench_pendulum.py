"""Pendulum-v1 benchmark: SoBiRL (successor), SoBiRL (myopic), DRLHF and SAC on the true reward.

    python -m agents.benchmark pendulum [--steps 20000] [--queries 300] [--seeds 3] [--workers 2]

Every run is one process-pool task; each writes ``<out>/pendulum_runs/<method>_seed<k>.json``
and finished runs are not redone (delete the file to rerun).  The report
``<out>/pendulum.md`` gives, per method, TRUE return of the final policy (10 deterministic
episodes, mean +- std over seeds), normalised score ``(R - R_random) / (R_SAC_true - R_random)``,
held-out preference accuracy on two sets of fresh pairs labelled by a noiseless teacher on the
TRUE reward (fragments of the final policy's own rollouts, and of rollouts of that policy with
action noise from none to uniform random: :data:`agents.quickstart.MIXED_NOISE`) and wall time per env step as a ratio to SAC in the same harness.  A PNG
shows TRUE training-episode returns against env steps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List

import numpy as np

from agents.reports import read_record, write_record, write_report

METHODS = ("sac_true", "sobirl", "sobirl_myopic", "drlhf")
ENV_ID = "Pendulum-v1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    parser.add_argument("--queries", type=int, default=300, help="synthetic preferences per run")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--out", default="benchmark")
    parser.add_argument(
        "--params", nargs="*", default=[], metavar="KEY=VALUE",
        help="overrides for the bilevel agents (SoBiRL, DRLHF), e.g. reward_steps=200; values are Python literals",
    )


def parse_params(items: List[str]) -> Dict:
    """``["reward_steps=200", ...]`` -> ``{"reward_steps": 200}`` (values are Python literals)."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--params: expected KEY=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"--params: {key}: not a Python literal: {value!r}") from err
    return out


def params_tag(params: Dict) -> str:
    """File-name suffix naming a run's overrides (``""`` without any), so cached runs never mix settings."""
    return "".join(f"_{k}-{v}" for k, v in sorted(params.items()))


def _run(method: str, seed: int, steps: int, queries: int, path: str, params: Dict) -> Dict:
    """One training run in a fresh process; returns (and writes) its record."""
    import gymnasium as gym
    import torch as th
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from agents.quickstart import MIXED_NOISE, heldout_preference_accuracy
    from agents.sobirl import DRLHF, SoBiRL
    from birl.feedback import SyntheticTeacher

    th.set_num_threads(1)

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points: List = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.points.append((int(self.num_timesteps), float(info["episode"]["r"])))
            return True

    common = dict(learning_starts=1000, seed=seed, verbose=0)
    if method == "sac_true":
        model = SAC("MlpPolicy", gym.make(ENV_ID), **common)
    else:
        algo = DRLHF if method == "drlhf" else SoBiRL
        extra = {"estimator": "myopic"} if method == "sobirl_myopic" else {}
        model = algo("MlpPolicy", gym.make(ENV_ID), feedback=SyntheticTeacher(seed=seed), n_queries=queries,
                     outer_freq=1000, **{**extra, **params}, **common)
    curve = Curve()
    start = time.perf_counter()
    model.learn(steps, callback=curve)
    wall = time.perf_counter() - start
    mean_r, std_r = evaluate_policy(model, Monitor(gym.make(ENV_ID)), n_eval_episodes=10, deterministic=True)
    record = {
        "method": method, "seed": seed, "steps": steps, "true_return": float(mean_r), "true_return_std": float(std_r),
        "wall_s": wall, "curve": curve.points,
        "labels": len(model.preferences) if hasattr(model, "preferences") else 0,
        "heldout_pref_accuracy": heldout_preference_accuracy(model, ENV_ID) if hasattr(model, "reward_model") else None,
        "mixed_pref_accuracy": (
            heldout_preference_accuracy(model, ENV_ID, noise=MIXED_NOISE) if hasattr(model, "reward_model") else None
        ),
        "params": params,
    }
    write_record(path, record)
    return record


def random_return(env=ENV_ID, n_episodes: int = 20, seed: int = 0) -> float:
    """Mean TRUE return of the uniform random policy on ``env`` (an env or an id), ``n_episodes``
    episodes reset with seeds ``seed, seed + 1, ...``."""
    import gymnasium as gym

    env = gym.make(env) if isinstance(env, str) else env
    env.action_space.seed(seed)
    total = []
    for ep in range(n_episodes):
        env.reset(seed=seed + ep)
        done, ret = False, 0.0
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            ret, done = ret + float(r), term or trunc
        total.append(ret)
    return float(np.mean(total))


def _table(records: List[Dict], r_random: float) -> str:
    by = {m: [r for r in records if r["method"] == m] for m in METHODS}
    r_sac = np.mean([r["true_return"] for r in by["sac_true"]]) if by["sac_true"] else float("nan")
    sac_step = np.mean([r["wall_s"] / r["steps"] for r in by["sac_true"]]) if by["sac_true"] else float("nan")
    lines = [
        "| method | TRUE return (mean +- std over seeds) | normalised score | held-out pref. accuracy: own rollouts "
        "| held-out pref. accuracy: good-to-random rollouts | labels | wall time / step vs SAC |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, rs in by.items():
        if not rs:
            continue
        R = np.array([r["true_return"] for r in rs])
        score = (R - r_random) / (r_sac - r_random)
        accs = [[r.get(k) for r in rs if r.get(k) is not None] for k in ("heldout_pref_accuracy", "mixed_pref_accuracy")]
        step = np.mean([r["wall_s"] / r["steps"] for r in rs])
        lines.append(
            f"| {m} | {R.mean():.1f} +- {R.std():.1f} (n={len(R)}) | {score.mean():.2f} +- {score.std():.2f} | "
            + "".join(f"{np.mean(a):.3f} +- {np.std(a):.3f} | " if a else "- | " for a in accs)
            + f"{int(np.mean([r['labels'] for r in rs]))} | "
            f"{step / sac_step:.2f} ({1000 * step:.1f} ms) |"
        )
    return "\n".join(lines)


def _plot(records: List[Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    grid = np.linspace(0, max(r["steps"] for r in records), 41)
    for m in METHODS:
        curves = []
        for r in (r for r in records if r["method"] == m):
            if r["curve"]:
                t, y = np.array(r["curve"]).T
                curves.append(np.interp(grid, t, y, left=np.nan))
        if curves:
            mean = np.nanmean(np.array(curves), axis=0)
            ax.plot(grid, mean, label=m)
    ax.set_xlabel("env steps")
    ax.set_ylabel("TRUE episode return (training episodes)")
    ax.set_title(f"{ENV_ID}: mean over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_pendulum(args: argparse.Namespace) -> str:
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; choose from {METHODS}")
    out = Path(args.out)
    runs = out / "pendulum_runs"
    runs.mkdir(parents=True, exist_ok=True)
    params = parse_params(args.params)
    jobs = []
    for seed in range(args.seeds):
        for m in methods:
            tag = "" if m == "sac_true" else params_tag(params)
            path = runs / f"{m}_seed{seed}{tag}.json"
            if not path.exists():
                jobs.append((m, seed, args.steps, args.queries, str(path), {} if m == "sac_true" else params))
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rec in pool.map(_run, *zip(*jobs)) if jobs else []:
            print(f"done {rec['method']} seed {rec['seed']}: TRUE return {rec['true_return']:.1f}, {rec['wall_s']:.0f} s", flush=True)
    found = [(p, read_record(p)) for p in sorted(runs.glob("*.json"))]
    kept = [(p, r) for p, r in found if r["method"] in methods and r["steps"] == args.steps
            and (r["method"] == "sac_true" or r.get("params", {}) == params)]
    records = [r for _, r in kept]
    r_random = random_return()
    report = "\n".join([
        f"# {ENV_ID}: SoBiRL vs DRLHF vs SAC on the true reward",
        "",
        f"Command: `python -m agents.benchmark pendulum --steps {args.steps} --queries {args.queries} --seeds {args.seeds} "
        f"--workers {args.workers}{' --params ' + ' '.join(args.params) if args.params else ''}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, one torch thread per run, "
        f"{args.workers} runs in parallel. R_random (uniform random policy, 20 episodes) = {r_random:.1f}.",
        "",
        _table(records, r_random),
        "",
        "TRUE return: 10 deterministic evaluation episodes of the final policy on the env's own reward. "
        "Held-out accuracy, own rollouts: 500 fresh pairs of 25-step fragments from 5 stochastic rollouts of the final "
        "policy. Good-to-random rollouts: 500 fresh pairs drawn from 20 rollouts of the final policy whose action is "
        "replaced by a uniform random one with probability 0, 0.25, 0.5 or 1 (5 episodes each). Both labelled by a "
        "noiseless teacher on the TRUE reward. Wall time per step includes all training work.",
        "",
        "![learning curves](pendulum_curves.png)",
    ])
    if write_report(out / "pendulum.md", report, records=[p for p, _ in kept], if_fewer="keep") is not None:
        _plot(records, out / "pendulum_curves.png")
    print(report)
    return report
