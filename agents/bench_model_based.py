"""Model-based benchmark: M-SoBiRL vs SoBiRL vs DRLHF (and SAC on the true reward) on Pendulum-v1.

    python -m agents.benchmark model-based [--steps 6000] [--queries 200] [--seeds 1] [--workers 2]
        [--msobirl-params gradient_steps=10 "estimator='none'" [--msobirl-params ...]]

Equal env steps and
label budgets for every preference method.  Each run is one process-pool task writing
``<out>/model_based_runs/<env>_<method>_seed<k>[_<overrides>].json`` (finished runs are reused;
``--msobirl-params`` overrides M-SoBiRL's settings and names its runs apart; repeat the flag to
benchmark several M-SoBiRL variants side by side, one table row each).  While a run trains, its
checkpoint (every tenth of the run) sits beside its record-to-be in ``<run>.checkpoints/``; a
killed run continues from there when the benchmark is started again (with a fresh episode).  The report
``<out>/model_based.md`` gives TRUE return of the final policy, env steps until the TRUE
training-episode return first reaches a normalised score
``(R - R_random) / (R_SAC_true - R_random) >= 0.9`` (``R_SAC_true``: final return of SAC on the
true reward in the same harness), and wall time per env step; ``<out>/model_based_curves.png``
plots TRUE training returns.  Hopper-v5 is accepted by ``--envs``, but its M-SoBiRL runs are
benchmarked in the MuJoCo suite instead (``python -m agents.benchmark mujoco --algos
sobirl,drlhf,sac,msobirl``: the zoo configs, with MBPO's Hopper settings, and the same evaluations
as the suite's SoBiRL, DRLHF and SAC runs; its table gives env steps to a normalised 0.9 too).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from agents.bench_pendulum import params_tag, parse_params
from agents.reports import read_record, steps_to_target, write_record, write_report

METHODS = ("sac_true", "msobirl", "sobirl", "drlhf")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=6000, help="env steps per run")
    parser.add_argument("--queries", type=int, default=200, help="synthetic preferences per run")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    parser.add_argument("--envs", default="Pendulum-v1", help="comma-separated env ids")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--out", default="benchmark")
    parser.add_argument(
        "--msobirl-params", nargs="*", action="append", default=None, metavar="KEY=VALUE",
        help="overrides for M-SoBiRL only, e.g. estimator='successor' gradient_steps=10; values are Python "
        "literals; repeat the flag for several variants (default: one variant, the agent's defaults)",
    )


def msobirl_variants(groups: Optional[List[List[str]]]) -> List[Dict]:
    """The ``--msobirl-params`` groups as override dicts, one per M-SoBiRL variant (``[{}]`` if none)."""
    variants = [parse_params(group) for group in groups or [[]]]
    tags = [params_tag(v) for v in variants]
    if len(set(tags)) != len(tags):
        raise ValueError(f"--msobirl-params: the same variant is given twice: {tags}")
    return variants


def label(record: Dict) -> str:
    """Table/legend name of a run: the method, with M-SoBiRL's overrides if any."""
    params = record.get("params") or {}
    return record["method"] + (f" ({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})" if params else "")


def _make_agent(method: str, env_id: str, seed: int, queries: int, params: Optional[Dict] = None):
    import gymnasium as gym
    from stable_baselines3 import SAC

    from agents.msobirl import MSoBiRL
    from agents.sobirl import DRLHF, SoBiRL
    from birl.feedback import SyntheticTeacher

    common = dict(learning_starts=1000, seed=seed, verbose=0)
    if method == "sac_true":
        return SAC("MlpPolicy", gym.make(env_id), **common)
    bilevel = dict(feedback=SyntheticTeacher(seed=seed), n_queries=queries, outer_freq=1000, **common)
    if method == "msobirl":
        return MSoBiRL("MlpPolicy", gym.make(env_id), dynamics_kwargs=dict(hidden=(128, 128)),
                       model_fit_kwargs=dict(max_epochs=20), rollout_schedule=(1000, 5000, 1, 5), **{**bilevel, **(params or {})})
    return (DRLHF if method == "drlhf" else SoBiRL)("MlpPolicy", gym.make(env_id), **bilevel)


def checkpoint_folder(path: str) -> Path:
    """Where the run recorded at ``path`` keeps its checkpoint while it trains."""
    return Path(path).with_suffix(".checkpoints")


def _run(method: str, env_id: str, seed: int, steps: int, queries: int, path: str, params: Dict) -> Dict:
    """One training run in a fresh process; returns (and writes) its record.

    A checkpoint (agent, replay buffer, curve and wall time so far) is written every tenth of
    the run to :func:`checkpoint_folder`; a killed run continues from it when started again."""
    import gymnasium as gym
    import torch as th
    from stable_baselines3.common.callbacks import ConvertCallback
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from agents.checkpoint import ProgressCheckpointCallback, ResumeCallback, find_checkpoint, stored_progress

    th.set_num_threads(1)
    folder = checkpoint_folder(path)
    resume = find_checkpoint(folder)
    before = stored_progress(resume)
    model = resume.load_agent(env=gym.make(env_id)) if resume is not None else _make_agent(method, env_id, seed, queries, params)
    curve: List = list(before.get("curve", []))

    def record(local_vars, _globals) -> bool:  # Monitor sits inside the reward wrapper: TRUE returns
        t = int(local_vars["self"].num_timesteps)
        curve.extend([t, float(info["episode"]["r"])] for info in local_vars.get("infos", []) if "episode" in info)
        return True

    start = time.perf_counter()
    progress = lambda: {"curve": list(curve), "wall_s": before.get("wall_s", 0.0) + time.perf_counter() - start,  # noqa: E731
                        "resumed": before["resumed"]}
    callbacks = [ResumeCallback(resume)] if resume is not None else []
    callbacks += [ConvertCallback(record), ProgressCheckpointCallback(max(1, steps // 10), folder, progress, keep=1, save_replay_buffer=True)]
    model.learn(steps, callback=callbacks)
    done = progress()
    mean_r, std_r = evaluate_policy(model, Monitor(gym.make(env_id)), n_eval_episodes=10, deterministic=True)
    record = {"method": method, "env": env_id, "seed": seed, "steps": steps, "true_return": float(mean_r),
              "true_return_std": float(std_r), "wall_s": done["wall_s"], "curve": curve, "resumed": done["resumed"],
              "labels": len(model.preferences) if hasattr(model, "preferences") else 0, "params": params}
    write_record(path, record)
    shutil.rmtree(folder, ignore_errors=True)  # the record is written: the run is complete
    return record


class _UniformPolicy:
    """``predict`` of the uniform random policy (for :func:`evaluate_policy`)."""

    def __init__(self, space) -> None:
        self.space = space

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return np.stack([self.space.sample() for _ in range(len(obs))]), None


def random_return(env_id: str, n_episodes: int = 20, seed: int = 0) -> float:
    """Mean TRUE return of the uniform random policy."""
    import gymnasium as gym
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    env = Monitor(gym.make(env_id))
    env.reset(seed=seed)
    env.action_space.seed(seed)
    mean, _ = evaluate_policy(_UniformPolicy(env.action_space), env, n_eval_episodes=n_episodes)
    return float(mean)


def steps_ratio(reach: Optional[int], reference: Optional[int]) -> str:
    """``reach / reference`` (env steps to the target against SoBiRL's on the same seed) as text."""
    if reach is None or reference is None:
        return "n/a"
    return f"{reach / reference:.2f}"


def _table(records: List[Dict], env_id: str, r_random: float) -> List[str]:
    records = sorted((r for r in records if r["env"] == env_id), key=lambda r: (METHODS.index(r["method"]), label(r), r["seed"]))
    by: Dict[str, List[Dict]] = {}
    for r in records:
        by.setdefault(label(r), []).append(r)
    r_sac = float(np.mean([r["true_return"] for r in by.get("sac_true", [])])) if by.get("sac_true") else float("nan")
    reach = {(label(r), r["seed"]): steps_to_target(r["curve"], r_random, r_sac) for r in records}
    lines = [f"### {env_id}", "", f"R_random = {r_random:.1f}, R_SAC_true = {r_sac:.1f} (final return of SAC on the true reward).", "",
             "| method | TRUE return (mean +- std over seeds) | normalised score | env steps to score 0.9 (per seed) "
             "| ... as a fraction of SoBiRL's (target <= 0.5) | labels | wall time / env step |",
             "|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        R = np.array([r["true_return"] for r in rs])
        steps = [reach[name, r["seed"]] for r in rs]
        ratios = [steps_ratio(reach[name, r["seed"]], reach.get(("sobirl", r["seed"]))) for r in rs]
        step_ms = 1000 * np.mean([r["wall_s"] / r["steps"] for r in rs])
        lines.append(f"| {name} | {R.mean():.1f} +- {R.std():.1f} (n={len(R)}) | {((R - r_random) / (r_sac - r_random)).mean():.2f} | "
                     f"{', '.join('never' if s is None else str(s) for s in steps)} | {', '.join(ratios)} | "
                     f"{int(np.mean([r['labels'] for r in rs]))} | {step_ms:.1f} ms |")
    return lines


def _plot(records: List[Dict], envs: List[str], path: Path) -> None:
    """Per env: for each method (and M-SoBiRL variant) the mean TRUE training return over seeds,
    shaded between the lowest and highest seed (curves interpolated onto a common step grid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(envs), figsize=(8 * len(envs), 4.5), squeeze=False)
    for ax, env_id in zip(axes[0], envs):
        groups: Dict[str, List[np.ndarray]] = {}
        for r in sorted((r for r in records if r["env"] == env_id and r["curve"]), key=lambda r: (METHODS.index(r["method"]), label(r))):
            groups.setdefault(label(r), []).append(np.array(r["curve"], dtype=float))
        for name, curves in groups.items():
            grid = np.unique(np.concatenate([c[:, 0] for c in curves]))
            grid = grid[grid <= min(c[-1, 0] for c in curves)]
            ys = np.array([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
            (line,) = ax.plot(grid, ys.mean(0), label=f"{name} (n={len(curves)})")
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
        ax.set(xlabel="env steps", ylabel="TRUE episode return (training episodes)", title=f"{env_id}: mean over seeds, min-max shaded")
        ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _shell_word(item: str) -> str:
    """``item`` quoted so that the printed command can be pasted into a shell (``"estimator='none'"``)."""
    import shlex

    return f'"{item}"' if "'" in item and not set('"$`\\') & set(item) else shlex.quote(item)


def _split(text: str) -> List[str]:
    return [part for part in text.split(",") if part]


def run_model_based(args: argparse.Namespace) -> str:
    """Run (or reuse) every run, then write ``model_based.md`` and ``model_based_curves.png``."""
    methods, envs = _split(args.methods), _split(args.envs)
    if not set(methods) <= set(METHODS):
        raise ValueError(f"--methods: unknown {sorted(set(methods) - set(METHODS))}; choose from {METHODS}")
    out = Path(args.out)
    runs = out / "model_based_runs"
    runs.mkdir(parents=True, exist_ok=True)
    variants = msobirl_variants(args.msobirl_params)
    settings = [(m, p) for m in methods for p in (variants if m == "msobirl" else [{}])]
    path = lambda e, m, s, p: runs / f"{e}_{m}_seed{s}{params_tag(p)}.json"  # noqa: E731
    jobs = [(m, e, s, args.steps, args.queries, str(path(e, m, s, p)), p)
            for e in envs for s in range(args.seeds) for m, p in settings if not path(e, m, s, p).exists()]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rec in pool.map(_run, *zip(*jobs)) if jobs else []:
            print(f"done {rec['env']} {rec['method']} seed {rec['seed']}: TRUE return {rec['true_return']:.1f}, {rec['wall_s']:.0f} s", flush=True)
    found = [(p, read_record(p)) for p in sorted(runs.glob("*.json"))]
    kept = [(p, r) for p, r in found if (r["method"], r.get("params", {})) in settings and r["env"] in envs
            and r["steps"] == args.steps and r["seed"] < args.seeds]
    records = [r for _, r in kept]
    lines = [
        "# Model-based: M-SoBiRL vs SoBiRL vs DRLHF (TRUE reward)",
        "",
        f"Command: `python -m agents.benchmark model-based --steps {args.steps} --queries {args.queries} --seeds {args.seeds} "
        f"--workers {args.workers} --envs {args.envs}"
        f"{''.join(' --msobirl-params ' + ' '.join(map(_shell_word, group)) for group in args.msobirl_params or [])}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}, one torch thread per run, "
        f"{args.workers} runs in parallel (wall times of parallel runs share the machine).",
        "",
    ]
    for env_id in envs:
        lines += _table(records, env_id, random_return(env_id)) + [""]
    lines += [
        "TRUE return: 10 deterministic evaluation episodes of the final policy on the env's own reward. "
        "Env steps to 0.9: first step where the mean of the last 3 TRUE training-episode returns reaches a "
        "normalised score of 0.9. Every preference method gets the same env steps and label budget.",
        "",
        "![learning curves](model_based_curves.png)",
    ]
    report = "\n".join(lines)
    if write_report(out / "model_based.md", report, records=[p for p, _ in kept], if_fewer="keep") is not None:
        _plot(records, envs, out / "model_based_curves.png")
    print(report)
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    run_model_based(p.parse_args())
