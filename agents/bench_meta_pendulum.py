"""``python -m agents.benchmark meta-pendulum``: a meta-learned reward across Pendulum-v1 variants
(seed 004, deep-RL half) versus a pooled multi-task reward fit, judged on held-out variants.

Task family: Gymnasium's Pendulum-v1 with its own mass ``m`` and length ``l``
(:func:`agents.meta.pendulum_variant_id`).  The TRUE reward ``-(theta^2 + 0.1 thetadot^2 +
0.001 u^2)`` is the same function of state and action in every variant; the dynamics differ
(torque authority ``3 / (m l^2)``, gravity term ``3 g / (2 l)``).

Training, on K variants with the same budget for both methods (env steps and labels per task):

* ``meta (SoBiRL)``: :class:`agents.meta.MetaRewardLearner` with :class:`agents.sobirl.SoBiRL`
  agents: one shared reward model and optimiser, one SAC + successor critic per task, outer
  steps on each task's own preferences interleaved round-robin = SGD on the meta objective
  ``mean_k f_k(x, pi*_k(x))`` (seed 004 eqs. (11)-(12)) with SoBiRL's first-order hypergradient;
* ``pooled (DRLHF)``: the same loop with :class:`agents.sobirl.DRLHF` agents, i.e. without the
  hypergradient's second term: the reward is fitted on the preferences of all tasks (SGD on the
  pooled Bradley-Terry loss, equal task weights), each task's SAC trained on it.  This is the
  deep analogue of ``DRLHF (pooled, online)`` in ``benchmark/meta_tabular.md``: same queries,
  same compute, only the second term missing.

Evaluation on each held-out variant: a FRESH SB3 SAC is trained on the learned reward, frozen
(``VecParameterisedReward`` over a ``Monitor``-ed env, so the Monitor sees TRUE rewards), then
its deterministic policy is scored by the TRUE return over 10 episodes; normalised score
``(R - R_random) / (R_SAC_true - R_random)`` with ``R_SAC_true`` the mean over seeds of SAC
trained on the TRUE reward of that variant with the same settings, ``R_random`` a uniform random
policy (20 episodes).  Held-out preference accuracy (:func:`agents.quickstart.heldout_preference_accuracy`,
:data:`agents.quickstart.MIXED_NOISE`: 500 pairs of 25-step fragments from good-to-random
rollouts on the variant, labelled by a noiseless teacher on the TRUE reward) on two sets: rollouts
of the reference SAC (true reward; the same policy and episode seeds for every method of a seed)
and rollouts of the method's own held-out SAC.

Resumable: every unit of work writes ``<out>/meta_pendulum_runs/*.json`` (training runs also the
reward model ``*.pt``, reference runs the SAC ``*.zip``); finished units are not redone (delete a
file to redo it; runs with other settings are kept apart by a tag in the name).  One process,
one torch thread.  Writes ``<out>/meta_pendulum.md`` and ``<out>/meta_pendulum.png``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Sequence, Tuple

import numpy as np

from agents.reports import read_record, write_record, write_report

METHODS = {"meta": "meta (SoBiRL)", "pooled": "pooled (DRLHF)"}
#: training variants (m, l) and held-out variants: one between them, one outside (weaker torque)
TRAIN_VARIANTS: Tuple[Tuple[float, float], ...] = ((0.8, 0.9), (1.2, 1.1))
HELDOUT_VARIANTS: Tuple[Tuple[float, float], ...] = ((1.0, 1.0), (1.35, 1.15))
NET_ARCH = [64, 64]
LEARNING_STARTS = 1000
OUTER_FREQ = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..n-1 (default 3)")
    parser.add_argument("--steps", type=int, default=6000, help="env steps per TRAINING task (default 6000)")
    parser.add_argument("--queries", type=int, default=200, help="preferences per training task (default 200)")
    parser.add_argument("--eval-steps", type=int, default=8000, help="env steps of each held-out SAC (default 8000)")
    parser.add_argument("--train", default=None, help="training variants 'm:l,m:l,...' (default 0.8:0.9,1.2:1.1)")
    parser.add_argument("--heldout", default=None, help="held-out variants 'm:l,...' (default 1:1,1.35:1.15)")
    parser.add_argument("--out", default="benchmark", help="output folder (default ./benchmark)")


def parse_variants(text: str, name: str) -> Tuple[Tuple[float, float], ...]:
    """``"0.8:0.9,1.2:1.1"`` -> ``((0.8, 0.9), (1.2, 1.1))``; errors name the option ``name``."""
    out = []
    for item in text.split(","):
        m, sep, l = item.partition(":")
        try:
            pair = (float(m), float(l))
        except ValueError:
            pair = None
        if not sep or pair is None or not all(np.isfinite(v) and v > 0 for v in pair):
            raise ValueError(f"{name}: expected positive 'm:l' pairs separated by commas, got {item!r}")
        out.append(pair)
    return tuple(out)


def _with(base: Path, suffix: str) -> Path:
    """``base`` + ``suffix`` (``Path.with_suffix`` would cut names such as ``..._m1.35_...`` at their dot)."""
    return base.parent / (base.name + suffix)


def _vname(v: Tuple[float, float]) -> str:
    return f"m{v[0]:g}_l{v[1]:g}"


def _agent_kwargs(queries: int) -> Dict:
    return dict(
        n_queries=queries, outer_freq=OUTER_FREQ, learning_starts=LEARNING_STARTS, verbose=0,
        policy_kwargs=dict(net_arch=list(NET_ARCH)), successor_net_arch=tuple(NET_ARCH),
    )


def _evaluate(policy, variant, seed: int) -> Tuple[float, float]:
    """TRUE return of ``policy`` on ``variant``: 10 deterministic episodes (seeded starts)."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    from agents.meta import make_pendulum_variant

    env = Monitor(make_pendulum_variant(*variant))
    env.reset(seed=10_000 + seed)
    mean, std = evaluate_policy(policy, env, n_eval_episodes=10, deterministic=True)
    return float(mean), float(std)


def random_return(variant, n_episodes: int = 20, seed: int = 0) -> float:
    """Mean TRUE return of the uniform random policy on ``variant``."""
    from agents.bench_pendulum import random_return as on_env
    from agents.meta import make_pendulum_variant

    return on_env(make_pendulum_variant(*variant), n_episodes, seed)


# ------------------------------------------------------------------ units of work
def train_run(method: str, seed: int, args, paths: Dict[str, Path]) -> Dict:
    """Meta-train (or pool-train) the shared reward on the training variants; save it."""
    from agents.meta import MetaRewardLearner, make_pendulum_variant
    from agents.sobirl import DRLHF, SoBiRL

    algo = SoBiRL if method == "meta" else DRLHF
    tasks = [make_pendulum_variant(*v) for v in args.train_variants]
    start = time.perf_counter()
    learner = MetaRewardLearner(tasks, algo=algo, seed=seed, **_agent_kwargs(args.queries))
    learner.learn(args.steps)
    wall = time.perf_counter() - start
    learner.save_reward_model(paths["reward"])
    train_returns = [_evaluate(agent, v, seed)[0] for agent, v in zip(learner.agents, args.train_variants)]
    record = {
        "kind": "train", "method": method, "seed": seed, "steps_per_task": args.steps, "queries": args.queries,
        "train_variants": [list(v) for v in args.train_variants], "wall_s": wall,
        "train_true_returns": train_returns, "train_pref_accuracy": learner.preference_accuracy(),
        "labels": learner.n_labels,
    }
    write_record(paths["json"], record)
    return record


def reference_run(variant, seed: int, args, paths: Dict[str, Path]) -> Dict:
    """SAC on the TRUE reward of a held-out variant (the normalisation's upper reference)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.monitor import Monitor

    from agents.meta import make_pendulum_variant

    start = time.perf_counter()
    sac = SAC("MlpPolicy", Monitor(make_pendulum_variant(*variant)), learning_starts=LEARNING_STARTS, seed=seed,
              verbose=0, policy_kwargs=dict(net_arch=list(NET_ARCH)))
    sac.learn(args.eval_steps)
    wall = time.perf_counter() - start
    sac.save(paths["model"])
    mean, std = _evaluate(sac, variant, seed)
    record = {"kind": "reference", "method": "sac_true", "seed": seed, "variant": list(variant),
              "eval_steps": args.eval_steps, "true_return": mean, "true_return_std": std, "wall_s": wall}
    write_record(paths["json"], record)
    return record


def heldout_run(method: str, variant, seed: int, args, paths: Dict[str, Path], reward_path: Path, reference_model: Path) -> Dict:
    """A fresh SAC on the frozen learned reward on a held-out variant; TRUE return and accuracy."""
    from stable_baselines3 import SAC

    from agents.meta import MetaRewardLearner, pendulum_variant_id
    from agents.quickstart import MIXED_NOISE, heldout_preference_accuracy
    from envs.make import make_reward_vec_env

    reward = MetaRewardLearner.load_reward_model(reward_path)
    reward.requires_grad_(False)
    reward.eval()
    env_id = pendulum_variant_id(*variant)
    venv = make_reward_vec_env(env_id, reward, n_envs=1, seed=seed)  # Monitor inside: TRUE returns
    start = time.perf_counter()
    sac = SAC("MlpPolicy", venv, learning_starts=LEARNING_STARTS, seed=seed, verbose=0,
              policy_kwargs=dict(net_arch=list(NET_ARCH)))
    sac.learn(args.eval_steps)
    wall = time.perf_counter() - start
    mean, std = _evaluate(sac, variant, seed)
    reference = SAC.load(reference_model)
    acc_ref = heldout_preference_accuracy(SimpleNamespace(reward_model=reward, predict=reference.predict), env_id,
                                          seed=123 + seed, noise=MIXED_NOISE)
    acc_own = heldout_preference_accuracy(SimpleNamespace(reward_model=reward, predict=sac.predict), env_id,
                                          seed=123 + seed, noise=MIXED_NOISE)
    record = {"kind": "heldout", "method": method, "seed": seed, "variant": list(variant), "eval_steps": args.eval_steps,
              "true_return": mean, "true_return_std": std, "pref_acc_reference_rollouts": acc_ref,
              "pref_acc_own_rollouts": acc_own, "wall_s": wall}
    write_record(paths["json"], record)
    return record


# ------------------------------------------------------------------ report
def _ms(values: Sequence[float], fmt: str = ".1f") -> str:
    v = np.asarray(values, dtype=float)
    return "-" if v.size == 0 else f"{v.mean():{fmt}} ± {v.std():{fmt}}"


def _report(args, command: str, records: List[Dict], r_random: Dict, total_s: float) -> Tuple[str, Dict]:
    seeds = list(range(args.seeds))
    train = {m: [r for r in records if r["kind"] == "train" and r["method"] == m] for m in METHODS}
    lines = [
        "# Meta-learned reward across Pendulum-v1 variants (seed 004, deep RL)",
        "",
        f"Produced by `{command}`; this invocation took {total_s:.0f} s (finished runs are reused; the runs' "
        f"training wall times sum to {sum(r['wall_s'] for r in records):.0f} s, evaluation rollouts excluded). Machine: "
        f"{platform.machine()}, {os.cpu_count()} logical CPUs (shared with other jobs), Python {sys.version.split()[0]}, "
        "one process, one torch thread.",
        "",
        "**Budget.** Training variants (m, l): " + ", ".join(f"({m:g}, {l:g})" for m, l in args.train_variants)
        + f"; K = {len(args.train_variants)} tasks, {args.steps} env steps and {args.queries} preferences per task "
        f"(25-step segments, noiseless teacher on the TRUE reward, front-loaded schedule, an outer step every {OUTER_FREQ} "
        f"steps from step {LEARNING_STARTS + 1}, 50 reward steps each); held-out variants: "
        + ", ".join(f"({m:g}, {l:g})" for m, l in args.heldout_variants)
        + f"; each held-out SAC: {args.eval_steps} env steps. All SACs (inner and held-out): MlpPolicy "
        f"net_arch={NET_ARCH}, learning_starts={LEARNING_STARTS}, other SB3 defaults; SoBiRL's successor critic "
        f"{NET_ARCH}; reward model MLP (64, 64). {len(seeds)} seeds.",
        "",
        "**Methods** (same tasks, steps and labels): **meta (SoBiRL)** = `agents.meta.MetaRewardLearner` with SoBiRL "
        "agents: one reward model and one Adam optimiser shared by the K tasks' agents, whose learn() calls alternate "
        f"in chunks of {OUTER_FREQ} steps, so the outer steps (each on its own task's preferences, with the successor "
        "hypergradient term) are SGD on the meta objective mean_k f_k(x, pi*_k(x)); **pooled (DRLHF)** = the same loop "
        "with DRLHF agents (no second hypergradient term): a multi-task fit of the reward on the preferences of all "
        "tasks, the deep analogue of `DRLHF (pooled, online)` in benchmark/meta_tabular.md.",
        "",
        "**Evaluation** on each held-out variant: a fresh SAC trained on the frozen learned reward; TRUE return of its "
        "deterministic policy over 10 episodes; normalised score (R - R_random) / (R_SAC_true - R_random) with "
        "R_SAC_true the mean over seeds of SAC trained on the TRUE reward of that variant (same settings) and R_random "
        "a uniform random policy (20 episodes). Pref. acc.: 500 pairs of 25-step fragments from good-to-random "
        "rollouts (action noise 0, 0.25, 0.5, 1) on the variant, labelled on the TRUE reward, from the reference SAC's "
        "policy (same policy, episode seeds and noise draws for both methods of a seed; the SAC's own action sampling "
        "is not reseeded, so the pairs share their distribution, not every sample) or from the method's own held-out SAC.",
        "",
        "## Training tasks",
        "",
        "| method | TRUE return of the inner policies (mean over tasks) | pref. acc. on own labels | labels / task | wall s / run |",
        "|---|---|---|---|---|",
    ]
    for m, rs in train.items():
        if rs:
            lines.append(
                f"| {METHODS[m]} | {_ms([np.mean(r['train_true_returns']) for r in rs])} | "
                f"{_ms([np.mean(r['train_pref_accuracy']) for r in rs], '.3f')} | "
                f"{int(np.mean([np.mean(r['labels']) for r in rs]))} | {np.mean([r['wall_s'] for r in rs]):.0f} |"
            )
    summary = {}
    for variant in args.heldout_variants:
        ref = [r for r in records if r["kind"] == "reference" and tuple(r["variant"]) == tuple(variant)]
        r_sac = float(np.mean([r["true_return"] for r in ref])) if ref else float("nan")
        rr = r_random[tuple(variant)]
        norm = lambda R: (np.asarray(R) - rr) / (r_sac - rr)  # noqa: E731
        lines += [
            "",
            f"## Held-out variant m = {variant[0]:g}, l = {variant[1]:g}",
            "",
            f"R_random = {rr:.1f}, R_SAC_true = {r_sac:.1f}.",
            "",
            "| method | TRUE return (mean ± std over seeds) | normalised score | pref. acc. (reference rollouts) "
            "| pref. acc. (own rollouts) | n seeds |",
            "|---|---|---|---|---|---|",
        ]
        for m, label in METHODS.items():
            rs = [r for r in records if r["kind"] == "heldout" and r["method"] == m and tuple(r["variant"]) == tuple(variant)]
            if not rs:
                continue
            R = [r["true_return"] for r in rs]
            summary[(m, tuple(variant))] = {r["seed"]: float(norm(r["true_return"])) for r in rs}
            lines.append(
                f"| {label} | {_ms(R)} | {_ms(norm(R), '.2f')} | {_ms([r['pref_acc_reference_rollouts'] for r in rs], '.3f')} | "
                f"{_ms([r['pref_acc_own_rollouts'] for r in rs], '.3f')} | {len(rs)} |"
            )
        if ref:
            lines.append(f"| reference: SAC on the TRUE reward | {_ms([r['true_return'] for r in ref])} | "
                         f"{_ms(norm([r['true_return'] for r in ref]), '.2f')} | - | - | {len(ref)} |")
        lines.append(f"| reference: uniform random policy | {rr:.1f} | 0.00 | - | - | - |")
    lines += ["", "![held-out normalised score](meta_pendulum.png)", "", "## Summary (computed from the tables)", ""]
    for variant in args.heldout_variants:
        a, b = summary.get(("meta", tuple(variant)), {}), summary.get(("pooled", tuple(variant)), {})
        common = sorted(set(a) & set(b))
        if not common:
            continue
        diff = np.array([b[s] - a[s] for s in common])
        mean_a, mean_b = np.mean([a[s] for s in common]), np.mean([b[s] for s in common])
        winner = "meta (SoBiRL)" if mean_a > mean_b else "pooled (DRLHF), the baseline"
        lines.append(
            f"* m = {variant[0]:g}, l = {variant[1]:g}: higher mean normalised score: **{winner}** "
            f"({mean_a:.3f} meta vs {mean_b:.3f} pooled); paired difference pooled - meta over {len(common)} seeds: "
            f"{diff.mean():.3f} ± {diff.std():.3f}" + (" (within the seed spread)" if abs(diff.mean()) <= diff.std() else "") + "."
        )
    return "\n".join(lines) + "\n", summary


def _plot(path: Path, args, summary: Dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    width = 0.35
    for j, (m, label) in enumerate(METHODS.items()):
        for i, variant in enumerate(args.heldout_variants):
            vals = list(summary.get((m, tuple(variant)), {}).values())
            if not vals:
                continue
            x = i + (j - 0.5) * width
            ax.bar(x, np.mean(vals), width, color=f"C{j}", alpha=0.7, label=label if i == 0 else None)
            ax.scatter([x] * len(vals), vals, color="k", s=12, zorder=3)
    ax.axhline(1.0, color="k", ls=":", lw=1, label="SAC on the TRUE reward")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(args.heldout_variants)), [f"held-out m={m:g}, l={l:g}" for m, l in args.heldout_variants])
    ax.set_ylabel("normalised TRUE return")
    ax.set_title("fresh SAC on the frozen learned reward (bars: mean, dots: seeds)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_meta_pendulum(args: argparse.Namespace, command: str) -> int:
    """The benchmark (see the module docstring); returns a process exit code."""
    import torch

    torch.set_num_threads(1)
    for name in ("seeds", "steps", "queries", "eval_steps"):
        value = getattr(args, name)
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    args.train_variants = parse_variants(args.train, "--train") if args.train else TRAIN_VARIANTS
    args.heldout_variants = parse_variants(args.heldout, "--heldout") if args.heldout else HELDOUT_VARIANTS
    out = Path(args.out)
    runs = out / "meta_pendulum_runs"
    runs.mkdir(parents=True, exist_ok=True)
    train_tag = f"K{len(args.train_variants)}-" + "-".join(_vname(v) for v in args.train_variants) + f"_s{args.steps}_q{args.queries}"
    start = time.perf_counter()
    records: List[Dict] = []

    def unit(path: Path, fn, *fn_args) -> Dict:
        if path.exists():
            return read_record(path)
        t0 = time.perf_counter()
        rec = fn(*fn_args)
        print(f"done {path.name} in {time.perf_counter() - t0:.0f} s (total {time.perf_counter() - start:.0f} s)", flush=True)
        return rec

    for seed in range(args.seeds):
        refs = {}
        for variant in args.heldout_variants:
            base = runs / f"ref_sac_true_{_vname(variant)}_e{args.eval_steps}_seed{seed}"
            paths = {"json": _with(base, ".json"), "model": _with(base, ".zip")}
            if paths["json"].exists() and not paths["model"].exists():
                paths["json"].unlink()  # the model is needed for the accuracy pairs: redo
            records.append(unit(paths["json"], reference_run, variant, seed, args, paths))
            refs[variant] = paths["model"]
        for method in METHODS:
            base = runs / f"train_{method}_{train_tag}_seed{seed}"
            paths = {"json": _with(base, ".json"), "reward": _with(base, ".pt")}
            if paths["json"].exists() and not paths["reward"].exists():
                paths["json"].unlink()
            records.append(unit(paths["json"], train_run, method, seed, args, paths))
            for variant in args.heldout_variants:
                hpath = runs / f"heldout_{method}_{train_tag}_{_vname(variant)}_e{args.eval_steps}_seed{seed}.json"
                records.append(unit(hpath, heldout_run, method, variant, seed, args, {"json": hpath}, paths["reward"], refs[variant]))
    r_random = {tuple(v): random_return(v) for v in args.heldout_variants}
    report, summary = _report(args, command, records, r_random, time.perf_counter() - start)
    write_report(out / "meta_pendulum.md", report)
    _plot(out / "meta_pendulum.png", args, summary)
    print(report)
    return 0
