"""MuJoCo and Atari benchmark suites on top of the rl_zoo3 integration (:mod:`agents.zoo`).

    python -m agents.benchmark mujoco [--envs Hopper-v5] [--seeds 3] [--steps 100000] [--queries 1000]
    python -m agents.benchmark atari  [--envs PongNoFrameskip-v4] [--seeds 3] [--steps 100000] [--queries 1000]

Each run (algorithm x env x seed) is one rl_zoo3 experiment built from ``zoo_configs/<algo>.yml``
by :func:`agents.zoo.experiment_manager` (same wrappers, hyperparameters and evaluation callback
as ``python -m agents.train``), with ``--steps`` env steps and, for SoBiRL and DRLHF,
``--queries`` synthetic preferences.  The algorithms are SoBiRL, DRLHF and SAC on the TRUE
reward; a uniformly random policy gives the score origin.

Execution.  With ``ray`` installed, runs are Ray tasks (one CPU each): a local Ray instance by
default, ``--address auto|HOST:PORT`` joins a cluster (the repository is shipped as the tasks'
working directory; each task returns its record to the driver, so no shared disk is needed).
Without Ray (or with ``--backend processes``) a local process pool of ``--workers`` runs them.

Resumable.  The driver writes ``<out>/zoo_runs/<suite>/<env>/<run>.json`` for each finished run,
where ``<run>`` names the algorithm, seed and a hash of every setting that changes the result;
existing records are not redone (delete one to rerun it); records are kept in git, the report
lists the ones it was made from and is not rewritten from fewer.  Within a run, a checkpoint (agent,
replay buffer, the evaluation curve and timings so far) is written after every evaluation to
``<out>/zoo_logs/<suite>/<env>/<run>/checkpoints`` (newest only; deleted when the run finishes);
a run that was killed continues from it when the suite is started again (``--no-checkpoints``
turns this off).  With Ray on a cluster that needs the task to land on a machine that sees the
same ``<out>`` folder.

Report.  ``<out>/results_<suite>.md`` (and ``<out>/results.md``, all suites together): per env
and algorithm, the TRUE return of the last evaluation (IQM over seeds with a 95% stratified
bootstrap confidence interval from ``rliable``; without it, a plain percentile bootstrap of
the IQM, 2,000 resamples), the normalised score ``(R - R_random) / (R_SAC - R_random)``,
preference accuracy on the training labels and on fresh held-out pairs (vector observations),
labels used, env steps, the first evaluation at which each run reaches a normalised 0.9,
and wall time per env step as a ratio to SAC in the same env (time
spent in evaluations excluded); ``<out>/curves_<suite>_<env>.png`` plots the TRUE evaluation
return against env steps.  Runs without a record are listed with the evaluations of their newest
checkpoint; ``--report-only`` writes the report without running anything (a suite still running,
here or on a cluster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from agents.reports import code_version, read_record, steps_to_target, write_record, write_report

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ALGOS = ("sobirl", "drlhf", "sac")
ALGOS = DEFAULT_ALGOS + ("msobirl",)  # M-SoBiRL: flat vector observations only (not Atari)
RANDOM = "random"


@dataclass(frozen=True)
class Suite:
    """Defaults of one benchmark suite (sized for a 2-core CPU; bigger budgets by flag)."""

    name: str
    envs: Tuple[str, ...]
    steps: int
    queries: int
    seeds: int
    evaluations: int
    eval_episodes: int


SUITES = {
    "mujoco": Suite("mujoco", ("Hopper-v5",), steps=100_000, queries=1000, seeds=3, evaluations=10, eval_episodes=5),
    "atari": Suite("atari", ("PongNoFrameskip-v4",), steps=100_000, queries=1000, seeds=3, evaluations=5, eval_episodes=3),
}


@dataclass(frozen=True)
class RunSpec:
    """One training run; everything that changes its result is a field."""

    suite: str
    env_id: str
    algo: str
    seed: int
    steps: int
    queries: int
    evaluations: int
    eval_episodes: int
    hyperparams: Tuple[Tuple[str, str], ...] = field(default=())

    @property
    def bilevel(self) -> bool:
        return self.algo not in ("sac", RANDOM)

    def overrides(self) -> Dict[str, Any]:
        """Hyperparameter overrides: the ``--hyperparams`` (bilevel-only keys dropped for SAC), ``n_queries``."""
        from agents.zoo import bilevel_keys

        params = {k: json.loads(v) for k, v in self.hyperparams}
        if not self.bilevel:
            return {k: v for k, v in params.items() if k not in bilevel_keys()}
        return {**params, "n_queries": self.queries}

    def name(self) -> str:
        settings = json.dumps(asdict(self), sort_keys=True)
        return f"{self.algo}_seed{self.seed}_{hashlib.sha1(settings.encode()).hexdigest()[:8]}"

    def log_folder(self, log_root: Union[str, Path]) -> Path:
        """The run's rl_zoo3 log folder (its checkpoints in ``checkpoints/``) under ``log_root``."""
        return Path(log_root) / self.suite / self.env_id.replace("/", "-") / self.name()

    def record_path(self, out: Path) -> Path:
        return out / "zoo_runs" / self.suite / self.env_id.replace("/", "-") / f"{self.name()}.json"


# ------------------------------------------------------------------ command line
def add_arguments(parser: argparse.ArgumentParser, suite: Suite) -> None:
    """The flags of one suite, with its defaults."""
    from rl_zoo3.utils import StoreDict

    parser.add_argument("--envs", default=",".join(suite.envs), help=f"comma-separated env ids (default: {','.join(suite.envs)})")
    parser.add_argument("--algos", default=",".join(DEFAULT_ALGOS), help=f"comma-separated subset of {ALGOS}")
    parser.add_argument("--seeds", type=int, default=suite.seeds, help=f"seeds per algorithm and env (default: {suite.seeds})")
    parser.add_argument("--steps", type=int, default=suite.steps, help=f"env steps per run (default: {suite.steps})")
    parser.add_argument("--queries", type=int, default=suite.queries, help=f"preference budget per run (default: {suite.queries})")
    parser.add_argument("--evaluations", type=int, default=suite.evaluations, help="TRUE-reward evaluations per run")
    parser.add_argument("--eval-episodes", type=int, default=suite.eval_episodes, help="episodes per evaluation")
    parser.add_argument(
        "-params", "--hyperparams", type=str, nargs="+", action=StoreDict, default={},
        help="hyperparameter overrides for every run, rl_zoo3 syntax (key:value); bilevel-only keys are not given to SAC; "
        "bilevel runs get absorbing_states:True unless it is given",
    )
    parser.add_argument(
        "--report-only", action="store_true",
        help="write the report from the finished runs without running anything; unfinished runs are listed "
        "with the evaluations of their newest checkpoint (a suite still running, here or on a cluster)",
    )
    parser.add_argument(
        "--only-seeds", default=None, metavar="S[,S...]",
        help="run only these seeds, in this order (e.g. 2,1: split a suite between machines without Ray, or "
        "run the seed that decides a target first); the report still covers all --seeds",
    )
    parser.add_argument("--backend", choices=("auto", "ray", "processes"), default="auto", help="auto: Ray when installed")
    parser.add_argument("--address", default=None, help="Ray cluster to join (auto or HOST:PORT; default: a local instance)")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs on this machine (default: 2)")
    parser.add_argument("--out", default="benchmark", help="output folder (default: benchmark)")
    parser.add_argument(
        "--checkpoints", action=argparse.BooleanOptionalAction, default=True,
        help="checkpoint each run (agent and replay buffer) after every evaluation and continue a killed run from "
        "its last one (default: on; deleted when the run finishes)",
    )


def add_mujoco_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, SUITES["mujoco"])


def add_atari_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, SUITES["atari"])


def _split(text: str, name: str, allowed: Optional[Sequence[str]] = None) -> List[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ValueError(f"{name} must list at least one item")
    unknown = sorted(set(items) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; choose from {list(allowed)}")
    return items


def plan(suite: str, args: argparse.Namespace) -> List[RunSpec]:
    """Every run of the command line, the random-policy baseline included (one per env)."""
    for name in ("seeds", "steps", "queries", "evaluations", "eval_episodes", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.steps < args.evaluations:
        raise ValueError(f"--steps ({args.steps}) must be at least --evaluations ({args.evaluations})")
    given = dict(args.hyperparams or {})
    params = tuple(sorted((k, json.dumps(v)) for k, v in given.items()))
    # bilevel runs name absorbing_states in their identity: records made before the option existed
    # (fragments inside episodes) are then never mistaken for runs with absorbing states
    bilevel_params = tuple(sorted((k, json.dumps(v)) for k, v in {"absorbing_states": True, **given}.items()))
    common = dict(suite=suite, steps=args.steps, evaluations=args.evaluations, eval_episodes=args.eval_episodes)
    specs = []
    for env_id in _split(args.envs, "--envs"):
        specs.append(RunSpec(env_id=env_id, algo=RANDOM, seed=0, queries=0, hyperparams=params, **common))
        algos = _split(args.algos, "--algos", ALGOS)
        if suite == "atari" and "msobirl" in algos:
            raise ValueError("--algos: msobirl learns dynamics of flat vector observations; it does not run on Atari")
        # seed-major order: an interrupted suite still has comparable (algo, seed) sets
        specs += [
            RunSpec(env_id=env_id, algo=algo, seed=s, queries=0, hyperparams=params, **common) if algo == "sac" else
            RunSpec(env_id=env_id, algo=algo, seed=s, queries=args.queries, hyperparams=bilevel_params, **common)
            for s in range(args.seeds) for algo in algos
        ]  # fmt: skip
    return specs


# ------------------------------------------------------------------ one run (in a worker)
class _Stopwatch:
    """Accumulates the time spent inside wrapped callables (here: evaluations)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


class _RandomAgent:
    """Uniform random actions with SB3's ``predict`` signature (the score origin)."""

    def __init__(self, action_space: Any, seed: int) -> None:
        self.action_space = action_space
        self.action_space.seed(seed)

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False):
        return np.stack([self.action_space.sample() for _ in range(len(obs))]), None


def _random_record(spec: RunSpec, log_folder: Path) -> Dict[str, Any]:
    """TRUE return of uniform random actions in the evaluation env of the SAC config."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from agents.zoo import experiment_manager

    manager = experiment_manager("sac", spec.env_id, log_folder, seed=spec.seed, hyperparams=spec.overrides())
    # the env-building half of ExperimentManager.setup_experiment (wrappers, frame stack), no model
    hyperparams, _ = _quiet(manager.read_hyperparameters)()
    _, manager.env_wrapper, _, manager.vec_env_wrapper = _quiet(manager._preprocess_hyperparams)(hyperparams)
    env = manager.create_envs(1, eval_env=True)
    try:
        agent = _RandomAgent(env.action_space, spec.seed)
        returns, _ = evaluate_policy(agent, env, n_eval_episodes=max(10, spec.eval_episodes), return_episode_rewards=True)
    finally:
        env.close()
    return {"final_return": float(np.mean(returns))}


def zoo_config(spec: RunSpec) -> Dict[str, str]:
    """The hyperparameters rl_zoo3 resolves for ``spec`` (its zoo YAML entry plus the overrides),
    values as strings: what a record was made with.  The run's name covers only the command line;
    this catches an edited ``zoo_configs/*.yml``."""
    import tempfile

    from agents.zoo import experiment_manager

    with tempfile.TemporaryDirectory(prefix="birl_config_") as tmp:
        manager = experiment_manager("sac" if spec.algo == RANDOM else spec.algo, spec.env_id, tmp, n_timesteps=spec.steps,
                                     hyperparams=spec.overrides(), seed=spec.seed)
        _, saved = _quiet(manager.read_hyperparameters)()
    return {str(k): str(v) for k, v in saved.items()}


def _config_change(stored: Optional[Dict[str, str]], current: Dict[str, str]) -> List[str]:
    """Keys whose value differs (``[]`` when ``stored`` is ``None``: made before configs were kept)."""
    if stored is None:
        return []
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def _set_aside(path: Path) -> Path:
    """Rename a stale record or checkpoint folder out of the way (kept, never deleted)."""
    target = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(target)
    return target


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its prints silenced (rl_zoo3 prints every hyperparameter)."""
    import contextlib
    import io

    def silent(*args: Any, **kwargs: Any) -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)

    return silent


def _train_record(spec: RunSpec, log_folder: Path, checkpoints: bool = True) -> Dict[str, Any]:
    """Train one run; with ``checkpoints``, write a checkpoint after every evaluation to
    ``<log_folder>/checkpoints`` and continue from the newest one if a killed run left it."""
    import shutil
    import tempfile

    from rl_zoo3.utils import EnvironmentName
    from stable_baselines3.common.callbacks import EvalCallback

    from agents.checkpoint import ProgressCheckpointCallback, ResumeCallback, find_checkpoint, stored_progress
    from agents.zoo import experiment_manager

    eval_freq = max(1, spec.steps // spec.evaluations)
    checkpoint_dir = log_folder / "checkpoints"
    config = zoo_config(spec)
    resume = find_checkpoint(checkpoint_dir) if checkpoints else None
    changed = _config_change(stored_progress(resume).get("config"), config)
    if changed:
        print(f"{spec.name()}: the zoo config changed since its checkpoint ({', '.join(changed)}); "
              f"starting over (checkpoints moved to {_set_aside(checkpoint_dir).name})", flush=True)
        resume = None
    before = stored_progress(resume)
    with tempfile.TemporaryDirectory(prefix="birl_bench_") as tmp:
        manager = experiment_manager(
            spec.algo, spec.env_id, log_folder, n_timesteps=spec.steps, hyperparams=spec.overrides(), seed=spec.seed,
            eval_freq=eval_freq, n_eval_episodes=spec.eval_episodes,
            trained_agent=resume.extract(tmp, vecnormalize_dir=str(EnvironmentName(spec.env_id))) if resume is not None else "",
        )
        model, _ = _quiet(manager.setup_experiment)()  # loads the agent and replay buffer of the checkpoint
    evaluation = _Stopwatch()
    evaluator = next(c for c in manager.callbacks if isinstance(c, EvalCallback))
    evaluator._on_step = evaluation.wrap(evaluator._on_step)
    start = time.perf_counter()

    def progress() -> Dict[str, Any]:
        """The record's curve and timings up to now, this part of the run and the parts before."""
        return {
            "curve_steps": before.get("curve_steps", []) + [int(t) for t in evaluator.evaluations_timesteps],
            "curve_returns": before.get("curve_returns", []) + [float(np.mean(r)) for r in evaluator.evaluations_results],
            "train_time_s": before.get("train_time_s", 0.0) + time.perf_counter() - start - evaluation.seconds,
            "eval_time_s": before.get("eval_time_s", 0.0) + evaluation.seconds,
            "resumed": before["resumed"],
            "config": config,
        }

    if resume is not None:  # first: it restores the counters the other callbacks read
        manager.callbacks.insert(0, ResumeCallback(resume))
    if checkpoints:  # a checkpoint right after each evaluation keeps a resumed run on the same grid
        manager.callbacks.append(ProgressCheckpointCallback(eval_freq, checkpoint_dir, progress, keep=1, save_replay_buffer=True))
    _quiet(manager.learn)(model)
    if model.num_timesteps < spec.steps:  # rl_zoo3's learn returns quietly on KeyboardInterrupt
        raise KeyboardInterrupt(f"{spec.name()} stopped at step {model.num_timesteps} of {spec.steps}"
                                + (f"; rerun to continue from {checkpoint_dir}" if checkpoints else ""))
    _quiet(manager.save_trained_model)(model)
    done = progress()
    record = {
        "final_return": done["curve_returns"][-1],
        "env_steps": int(model.num_timesteps),
        **done,
    }
    record["final_policy_entropy"] = policy_entropy(model)
    if spec.bilevel:
        record.update(_feedback_metrics(model, spec.env_id))
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # the run is complete: its final model is saved
    return record


def policy_entropy(model: Any, n_states: int = 1000) -> Optional[float]:
    """Mean entropy (nats) of a discrete agent's policy on up to ``n_states`` states spread over its
    replay buffer: a policy collapsed onto one action shows as about 0 (uniform: ``log n_actions``).
    ``None`` for continuous actions, dict observations or an empty buffer."""
    import torch as th

    actor = getattr(model, "actor", None)
    buffer = getattr(model, "replay_buffer", None)
    if not hasattr(actor, "action_probs") or buffer is None or isinstance(buffer.observations, dict):
        return None
    size = buffer.size()
    if size == 0:
        return None
    idx = np.unique(np.linspace(0, size - 1, min(n_states, size)).astype(int))
    total = 0.0
    with th.no_grad():
        for chunk in np.array_split(idx, -(-len(idx) // 256)):
            probs, log_probs = actor.action_probs(th.as_tensor(buffer.observations[chunk, 0], device=model.device))
            total += float(-(probs * log_probs).sum(1).sum())
    return total / len(idx)


def _feedback_metrics(model: Any, env_id: str) -> Dict[str, Any]:
    """Labels used and preference accuracy (training labels; fresh pairs for vector observations)."""
    metrics: Dict[str, Any] = {"labels": 0, "train_pref_accuracy": None, "heldout_pref_accuracy": None}
    if not model.uses_preferences:
        return metrics
    metrics["labels"] = len(model.preferences)
    metrics["train_pref_accuracy"] = float(model.preference_accuracy())
    if len(model.observation_space.shape) == 1:  # the rollouts of the held-out check use the raw env
        from agents.quickstart import heldout_preference_accuracy

        metrics["heldout_pref_accuracy"] = float(heldout_preference_accuracy(model, env_id, horizon=model.segment_length))
    return metrics


def run_one(spec: RunSpec, log_root: str, checkpoints: bool = True) -> Dict[str, Any]:
    """Train (or, for ``random``, evaluate) one run in this process; return its record."""
    import torch as th

    th.set_num_threads(1)
    log_folder = spec.log_folder(log_root)
    if spec.algo == RANDOM:
        measure = {**_random_record(spec, log_folder), "config": zoo_config(spec)}
    else:
        measure = _train_record(spec, log_folder, checkpoints)
    return {**asdict(spec), "host": platform.node(), **code_version(), **measure}


# ------------------------------------------------------------------ execution
def _use_ray(backend: str) -> bool:
    if backend == "processes":
        return False
    try:
        import ray  # noqa: F401
    except ImportError:
        if backend == "ray":
            raise ImportError("--backend ray needs ray: pip install ray") from None
        return False
    return True


def _execute_ray(specs: List[RunSpec], args: argparse.Namespace, log_root: str) -> Any:
    import ray

    if args.address:  # a cluster: ship this repository as the working directory of the tasks
        runtime_env = {"working_dir": str(REPO), "excludes": [".git", "benchmark", "logs"]}
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        pythonpath = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        # Ray renices its workers to 15, so any other job on the machine (even a test run)
        # starves the benchmark; a local instance started here keeps them at the default priority
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=args.workers, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}}, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(run_one)
        pending = {task.remote(spec, log_root, args.checkpoints): spec for spec in specs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            yield pending.pop(done[0]), ray.get(done[0])
    finally:
        ray.shutdown()


def _execute_processes(specs: List[RunSpec], args: argparse.Namespace, log_root: str) -> Any:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_one, spec, log_root, args.checkpoints): spec for spec in specs}
        for future in as_completed(futures):
            yield futures[future], future.result()


def execute(specs: List[RunSpec], args: argparse.Namespace) -> None:
    """Run the specs that have no record yet (or one made with another zoo config, which is set
    aside); write each record as soon as it arrives."""
    out = Path(args.out)
    todo = []
    for spec in specs:
        path = spec.record_path(out)
        if path.is_file():
            changed = _config_change(read_record(path).get("config"), zoo_config(spec))
            if not changed:
                continue
            print(f"{spec.name()}: the zoo config changed since this run ({', '.join(changed)}); "
                  f"rerunning (old record moved to {_set_aside(path).name})", flush=True)
        todo.append(spec)
    print(f"{len(specs) - len(todo)} of {len(specs)} runs already done; running {len(todo)}", flush=True)
    if not todo:
        return
    log_root = str((out / "zoo_logs").resolve())
    runner = _execute_ray if _use_ray(args.backend) else _execute_processes
    for spec, record in runner(todo, args, log_root):
        path = spec.record_path(out)
        write_record(path, record)
        print(f"done {spec.env_id} {spec.algo} seed {spec.seed}: TRUE return {record['final_return']:.1f}", flush=True)


# ------------------------------------------------------------------ statistics and report
def _rliable() -> Optional[Tuple[Any, Any]]:
    """``(library, metrics)`` of rliable, or ``None`` when it is missing or fails to import
    (rliable 1.2 needs ``arch < 8``, which fails to import with ``pandas >= 3``)."""
    try:
        from rliable import library, metrics
    except Exception as err:  # noqa: BLE001 - any import failure selects the fallback, reported below
        print(f"rliable unavailable ({type(err).__name__}: {err}); using the plain bootstrap", file=sys.stderr)
        return None
    return library, metrics


def ci_method() -> str:
    """How :func:`iqm_with_ci` computes intervals here (printed in the report)."""
    return "rliable stratified bootstrap" if _rliable() else "percentile bootstrap over runs (rliable unavailable)"


def iqm_with_ci(scores: Sequence[float], reps: int = 2000, seed: int = 0) -> Tuple[float, float, float]:
    """IQM of ``scores`` (one per run) and a 95% bootstrap confidence interval.

    ``rliable`` (stratified bootstrap) when it imports, else a percentile bootstrap over runs
    of ``scipy.stats.trim_mean(x, 0.25)``, the same statistic.
    """
    runs = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    rliable = _rliable()
    if rliable is None:
        from scipy.stats import trim_mean

        rng = np.random.default_rng(seed)
        boots = [trim_mean(runs[rng.integers(0, len(runs), len(runs)), 0], 0.25) for _ in range(reps)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        return float(trim_mean(runs[:, 0], 0.25)), float(lo), float(hi)
    library, metrics = rliable
    np.random.seed(seed)  # rliable draws from numpy's global generator
    point, interval = library.get_interval_estimates({"x": runs}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


def _fmt(value: Optional[float], spec: str = ".3f") -> str:
    return "-" if value is None or not np.isfinite(value) else format(value, spec)


def _mean_of(records: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def env_table(records: List[Dict[str, Any]], env_id: str) -> str:
    """The markdown table of one env (module docstring)."""
    runs = {algo: [r for r in records if r["env_id"] == env_id and r["algo"] == algo] for algo in ALGOS}
    random = [r["final_return"] for r in records if r["env_id"] == env_id and r["algo"] == RANDOM]
    r_random = float(np.mean(random)) if random else None
    r_sac = _mean_of(runs["sac"], "final_return")
    sac_step = _mean_of([{"t": r["train_time_s"] / r["env_steps"]} for r in runs["sac"]], "t")
    lines = [
        f"### {env_id}",
        "",
        f"R_random = {_fmt(r_random, '.1f')} (uniform random policy).",
        "",
        "| algorithm | runs | TRUE return IQM [95% CI] | normalised score (mean) | env steps to normalised 0.9 (per seed) "
        "| pref. accuracy train / held-out | labels | env steps | time/step vs SAC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for algo, rs in runs.items():
        if not rs:
            continue
        iqm, lo, hi = iqm_with_ci([r["final_return"] for r in rs])
        normalised, reach = None, "-"
        if r_random is not None and r_sac is not None and r_sac > r_random:  # else the scale is meaningless
            normalised = float(np.mean([(r["final_return"] - r_random) / (r_sac - r_random) for r in rs]))
            steps = [steps_to_target(list(zip(r["curve_steps"], r["curve_returns"])), r_random, r_sac, window=1) for r in rs]
            reach = ", ".join("never" if t is None else str(t) for t in steps)
        step = float(np.mean([r["train_time_s"] / r["env_steps"] for r in rs]))
        accuracy = f"{_fmt(_mean_of(rs, 'train_pref_accuracy'))} / {_fmt(_mean_of(rs, 'heldout_pref_accuracy'))}"
        ratio = f"{step / sac_step:.2f}" if sac_step else "-"
        lines.append(
            f"| {algo} | {len(rs)} | {iqm:.1f} [{lo:.1f}, {hi:.1f}] | {_fmt(normalised, '.2f')} | {reach} | {accuracy} | "
            f"{_fmt(_mean_of(rs, 'labels'), '.0f')} | {_fmt(_mean_of(rs, 'env_steps'), '.0f')} | {ratio} ({1000 * step:.1f} ms) |"
        )
    if not any(runs.values()):
        lines[-2:] = ["No finished training run yet."]
    return "\n".join(lines)


def _logged_evaluations(log_folder: Path) -> List[Tuple[int, float]]:
    """``(step, mean TRUE return)`` of each evaluation in the newest ``evaluations.npz`` that
    rl_zoo3's EvalCallback wrote under ``log_folder`` (``<algo>/<env>_<k>/``); empty when there is
    none or it cannot be read (the callback may be rewriting it right now)."""
    files = sorted(log_folder.glob("*/*/evaluations.npz"), key=lambda f: f.stat().st_mtime)
    if not files:
        return []
    try:
        with np.load(files[-1]) as data:
            return list(zip(data["timesteps"].tolist(), np.mean(data["results"], axis=1).tolist()))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return []


def _curve_text(curve: List[Tuple[int, float]]) -> str:
    return "; ".join(f"{r:.1f} at step {t}" for t, r in curve)


def unfinished(specs: List[RunSpec], out: Path) -> List[str]:
    """Markdown lines for the runs without a record: the evaluations of their newest checkpoint or,
    for a run without one (``--no-checkpoints``, or stopped before its first), those its rl_zoo3
    log folder holds."""
    from agents.checkpoint import find_checkpoint, stored_progress

    lines = []
    for spec in specs:
        if spec.record_path(out).is_file():
            continue
        folder = spec.log_folder(out / "zoo_logs")
        progress = stored_progress(find_checkpoint(folder / "checkpoints"))
        curve = list(zip(progress.get("curve_steps", []), progress.get("curve_returns", [])))
        source = ""
        if not curve:
            curve, source = _logged_evaluations(folder), " (no checkpoint: its log folder's evaluations.npz)"
        state = _curve_text(curve) + source if curve else "no checkpoint"
        lines.append(f"- {spec.env_id} {spec.algo} seed {spec.seed} (`{spec.name()}`): {state}")
    if not lines:
        return []
    return ["", "### Unfinished runs", "", "TRUE returns of the evaluations in each run's newest checkpoint, or in "
            "its log folder when it has none (not in the tables above).", "", *lines]


def plot_curves(records: List[Dict[str, Any]], env_id: str, path: Path) -> None:
    """TRUE evaluation return against env steps: mean over seeds, band from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for algo in ALGOS:
        runs = [r for r in records if r["env_id"] == env_id and r["algo"] == algo and r.get("curve_steps")]
        if not runs:
            continue
        n = min(len(r["curve_steps"]) for r in runs)
        steps = np.asarray(runs[0]["curve_steps"][:n])
        returns = np.array([r["curve_returns"][:n] for r in runs])
        ax.plot(steps, returns.mean(0), marker="o", label=f"{algo} ({len(runs)} seeds)")
        ax.fill_between(steps, returns.min(0), returns.max(0), alpha=0.2)
    random = [r["final_return"] for r in records if r["env_id"] == env_id and r["algo"] == RANDOM]
    if random:
        ax.axhline(float(np.mean(random)), color="gray", linestyle="--", label="random policy")
    ax.set(xlabel="env steps", ylabel="TRUE return (evaluation)", title=env_id)
    if ax.get_legend_handles_labels()[0]:  # nothing finished yet: an empty plot, no legend
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(suite: str, specs: List[RunSpec], args: argparse.Namespace, command: str) -> str:
    """Write ``results_<suite>.md``, the PNGs and ``results.md``; return the suite's markdown."""
    out = Path(args.out)
    paths = [s.record_path(out) for s in specs if s.record_path(out).is_file()]
    records = [read_record(path) for path in paths]
    envs = list(dict.fromkeys(s.env_id for s in specs))
    parts = [
        f"## {suite}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}; one torch "
        f"thread per run. Budget: {args.steps} env steps, {args.queries} preferences (SoBiRL, DRLHF), "
        f"{args.evaluations} evaluations of {args.eval_episodes} episodes per run.",
        "",
        "TRUE return: the env's own reward in the last evaluation (rl_zoo3's EvalCallback). IQM over seeds "
        f"with a 95% confidence interval ({ci_method()}). Normalised score: (R - R_random) / (R_SAC - R_random), "
        "shown only where SAC beats the random policy (R_SAC: SAC's mean final return). Env steps to normalised 0.9: "
        "the first evaluation at which a run's score reaches 0.9 (the sample-efficiency target of M-SoBiRL). "
        "Preference accuracy: agreement of the learned reward with the training labels, and with fresh "
        "pairs of the final policy's rollouts labelled on the TRUE reward (vector observations only). "
        "Time per step excludes evaluations.",
    ]
    pngs = {env_id: f"curves_{suite}_{env_id.replace('/', '-')}.png" for env_id in envs}
    for env_id, png in pngs.items():
        parts += ["", env_table(records, env_id), "", f"![TRUE return vs env steps]({png})"]
    parts += unfinished(specs, out)
    text = "\n".join(parts) + "\n"
    # after a run, a narrower selection than the report's leaves it and its figures (the records are saved)
    if write_report(out / f"results_{suite}.md", text, records=paths, if_fewer="raise" if args.report_only else "keep") is None:
        return text
    for env_id, png in pngs.items():
        plot_curves(records, env_id, out / png)
    sections = [(out / f"results_{name}.md").read_text() for name in SUITES if (out / f"results_{name}.md").is_file()]
    (out / "results.md").write_text("# Benchmarks: SoBiRL vs DRLHF vs SAC on the TRUE reward\n\n" + "\n".join(sections))
    return text


def _command(suite: str, args: argparse.Namespace) -> str:
    """The command line that reproduces this report (every setting spelled out)."""
    words = ["python -m agents.benchmark", suite, "--envs", args.envs, "--algos", args.algos]
    for name in ("seeds", "steps", "queries", "evaluations", "eval_episodes"):
        words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.hyperparams:
        words += ["-params", *(f"{k}:{v!r}" for k, v in sorted(args.hyperparams.items()))]
    return " ".join(words)


def selected(specs: List[RunSpec], only_seeds: Optional[str], n_seeds: int) -> List[RunSpec]:
    """The specs of ``--only-seeds`` (all of them when it is ``None``), seed by seed in its order;
    the random baselines come first."""
    if only_seeds is None:
        return specs
    try:
        seeds = [int(x) for x in _split(only_seeds, "--only-seeds")]
    except ValueError as error:
        raise ValueError(f"--only-seeds must be comma-separated integers, got {only_seeds!r}") from error
    bad = [s for s in seeds if not 0 <= s < n_seeds]
    if bad or len(set(seeds)) != len(seeds):
        raise ValueError(f"--only-seeds: each seed once, from 0 to --seeds - 1 = {n_seeds - 1}; got {only_seeds!r}")
    return [spec for spec in specs if spec.algo == RANDOM] + [
        spec for seed in seeds for spec in specs if spec.algo != RANDOM and spec.seed == seed
    ]


def run_suite(suite: str, args: argparse.Namespace) -> str:
    """Plan, run what is missing, and report one suite."""
    specs = plan(suite, args)
    todo = selected(specs, args.only_seeds, args.seeds)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        execute(todo, args)
    command = _command(suite, args)
    text = report(suite, specs, args, command)
    print(text)
    return text


def run_mujoco(args: argparse.Namespace) -> str:
    """The MuJoCo suite (``add_mujoco_arguments`` defines ``args``)."""
    return run_suite("mujoco", args)


def run_atari(args: argparse.Namespace) -> str:
    """The Atari suite (``add_atari_arguments`` defines ``args``)."""
    return run_suite("atari", args)
