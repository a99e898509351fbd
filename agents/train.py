"""Train with rl_zoo3: ``python -m agents.train --algo {sobirl,drlhf,sac} --env ENV_ID [...]``.

This is rl_zoo3's own ``train`` (ExperimentManager, hyperparameter loading, env wrappers,
evaluation callbacks, saving layout, Optuna tuning) with our algorithms registered
(:func:`agents.zoo.register`), so every rl_zoo3 flag keeps working.  Differences:

* ``--conf-file`` defaults to ``zoo_configs/<algo>.yml`` of this repository when it exists
  (other rl_zoo3 algorithms keep rl_zoo3's own hyperparameters);
* ``--feedback {preferences,demonstrations}`` (bilevel algorithms) overrides the ``feedback``
  hyperparameter; expert data for demonstrations come from ``demonstrations_kwargs``
  (``-params "demonstrations_kwargs:dict(path='demos.npz')"``, see :mod:`agents.zoo`);
* ``--algo`` defaults to ``sobirl`` and ``--num-threads`` to 1 (small networks run fastest on
  one CPU thread);
* ``--checkpoint-freq N`` writes a full checkpoint (:mod:`agents.checkpoint`: agent, optimiser
  states, labels, counters, RNG states; the replay buffer too with rl_zoo3's
  ``--save-replay-buffer``) every ``N`` environment steps to ``<run folder>/checkpoints/``,
  keeping the newest ``--checkpoint-keep`` (default 2);
* ``--resume PATH`` (a checkpoint file, or a folder: its newest readable checkpoint) continues
  a killed run: the command line stored in the checkpoint is replayed (flags given next to
  ``--resume`` are appended, so they win), through rl_zoo3's ``--trained-agent`` (which loads
  the agent, the replay buffer and VecNormalize statistics), with ``-n`` set to the original
  total; the step counter, query schedule and RNG states continue from the checkpoint.  The
  resumed run gets a new rl_zoo3 run folder (``<env>_<N+1>``).

Examples::

    python -m agents.train --algo sobirl --env Hopper-v5 -n 200000 --seed 0
    python -m agents.train --algo drlhf --env PongNoFrameskip-v4 -params n_queries:1000
    python -m agents.train --algo sobirl --env Pendulum-v1 -n 20000 -optimize \\
        --n-trials 20 --storage sqlite:///tuning.db --study-name pendulum_sobirl
    python -m agents.train --algo sobirl --env Hopper-v5 --checkpoint-freq 10000 --save-replay-buffer
    python -m agents.train --resume logs/sobirl/Hopper-v5_1/checkpoints

Models land in rl_zoo3's layout, ``<log-folder>/<algo>/<env>_<run>/`` (``<env>.zip``, the
``<env>/config.yml`` of the hyperparameters used, monitor files of TRUE episode returns and
``evaluations.npz`` of the TRUE-reward evaluations).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, List, Optional, Sequence

from agents.zoo import ALGORITHMS, FEEDBACK_KINDS, default_config, register

_PARAMS_FLAGS = ("-params", "--hyperparams")


def _extras_parser() -> argparse.ArgumentParser:
    """The flags this front end adds to, or gives new defaults in, rl_zoo3's parser."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--algo", default="sobirl", help="algorithm (default: sobirl)")
    parser.add_argument("-conf", "--conf-file", default=None, help="hyperparameter file (default: zoo_configs/<algo>.yml)")
    parser.add_argument("--num-threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument(
        "--feedback", choices=FEEDBACK_KINDS, default=None,
        help="feedback source of a bilevel algorithm (overrides the 'feedback' hyperparameter)",
    )
    parser.add_argument(
        "--checkpoint-freq", type=int, default=-1,
        help="write a resumable checkpoint every N environment steps to <run folder>/checkpoints (default: off)",
    )
    parser.add_argument("--checkpoint-keep", type=int, default=2, help="checkpoints to keep (default: 2)")
    parser.add_argument(
        "--resume", default=None, metavar="PATH",
        help="continue the run of a checkpoint file, or of the newest readable checkpoint in a folder",
    )
    parser.add_argument(
        "--save-replay-buffer", action="store_true", default=False,
        help="(rl_zoo3) save the replay buffer with the final model and in every checkpoint",
    )
    return parser


def _drop_flags(argv: Sequence[str], names: Sequence[str]) -> List[str]:
    """``argv`` without the flags ``names`` (each taking one value, ``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in names:
            skip = True
            continue
        if any(token.startswith(f"{name}=") for name in names):
            continue
        out.append(token)
    return out


def _value_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("-n", "--n-timesteps", type=int, default=None)
    parser.add_argument("-optimize", "--optimize-hyperparameters", action="store_true", default=False)
    parser.add_argument("-i", "--trained-agent", default="")
    return parser


def _with_hyperparameter(argv: List[str], key: str, value: str) -> List[str]:
    """``argv`` with ``key:value`` first in its (last) ``-params`` list, so explicit ones still win."""
    argv = list(argv)
    positions = [i for i, token in enumerate(argv) if token in _PARAMS_FLAGS]
    if not positions:
        return argv + [_PARAMS_FLAGS[0], f"{key}:{value}"]
    argv.insert(positions[-1] + 1, f"{key}:{value}")
    return argv


def zoo_argv(argv: Sequence[str]) -> List[str]:
    """Translate our command line into rl_zoo3's (see module docstring)."""
    extras, rest = _extras_parser().parse_known_args(list(argv))
    out = ["--algo", extras.algo, "--num-threads", str(extras.num_threads)]
    if extras.save_replay_buffer:
        out.append("--save-replay-buffer")
    conf = extras.conf_file or default_config(extras.algo)
    if conf is not None:
        out += ["--conf-file", str(conf)]
    if extras.feedback is not None:
        algorithm = ALGORITHMS.get(extras.algo)
        if algorithm is None or not algorithm.bilevel:
            bilevel = sorted(name for name, algo in ALGORITHMS.items() if algo.bilevel)
            raise SystemExit(f"--feedback applies to the bilevel algorithms {bilevel}, not --algo {extras.algo}")
        rest = _with_hyperparameter(rest, "feedback", repr(extras.feedback))
    return out + rest


@contextmanager
def _argv(argv: List[str]) -> Iterator[None]:
    saved = sys.argv
    sys.argv = [saved[0] if saved else "agents.train", *argv]
    try:
        yield
    finally:
        sys.argv = saved


def _checkpointing_manager(base: type, extras: argparse.Namespace, run_argv: List[str], checkpoint: Any) -> type:
    """rl_zoo3's ``ExperimentManager`` with our callbacks added after its own: a
    :class:`~agents.checkpoint.ResumeCallback` (``checkpoint``) and a
    :class:`~agents.checkpoint.BilevelCheckpointCallback` (``--checkpoint-freq``)."""
    from agents.checkpoint import BilevelCheckpointCallback, ResumeCallback

    class CheckpointingExperimentManager(base):  # type: ignore[misc, valid-type]
        def create_callbacks(self) -> None:
            super().create_callbacks()
            if checkpoint is not None:
                self.callbacks.append(ResumeCallback(checkpoint, verbose=self.verbose))
            if extras.checkpoint_freq > 0:
                self.callbacks.append(
                    BilevelCheckpointCallback(
                        extras.checkpoint_freq, os.path.join(self.save_path, "checkpoints"), keep=extras.checkpoint_keep,
                        save_replay_buffer=self.save_replay_buffer, verbose=self.verbose,
                        metadata={"train_argv": run_argv, "algo": self.algo, "env": str(self.env_name)},
                    )
                )

    return CheckpointingExperimentManager


def _resume_argv(argv: List[str], extras: argparse.Namespace, stack: ExitStack) -> Any:
    """``(argv to run, extracted agent zip, checkpoint)`` for ``--resume``: the stored command
    line, then the flags given now, with ``-n`` the original total; the agent zip (beside it the
    replay buffer and VecNormalize statistics) is what rl_zoo3's ``--trained-agent`` reads."""
    from agents.checkpoint import load_latest_checkpoint

    checkpoint = load_latest_checkpoint(extras.resume)
    given = _drop_flags(argv, ["--resume"])
    stored = checkpoint.metadata.get("train_argv")
    values = _value_parser().parse_known_args(given)[0]
    if values.trained_agent:
        raise SystemExit("--resume and -i/--trained-agent exclude each other")
    if values.n_timesteps is not None and values.n_timesteps != checkpoint.total_timesteps:
        raise SystemExit(
            f"--resume continues the original budget of {checkpoint.total_timesteps} steps; -n {values.n_timesteps} differs"
        )
    run_argv = _drop_flags((list(stored) if stored is not None else []) + given, ["-n", "--n-timesteps"])
    run_argv += ["-n", str(checkpoint.total_timesteps)]
    from rl_zoo3.utils import EnvironmentName

    env_name = str(EnvironmentName(_value_parser().parse_known_args(run_argv)[0].env))
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="birl_resume_"))
    agent = checkpoint.extract(folder, vecnormalize_dir=env_name)
    print(f"Resuming {checkpoint.path} at step {checkpoint.num_timesteps} of {checkpoint.total_timesteps}")
    return run_argv, agent, checkpoint


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run rl_zoo3's training with our algorithms registered and our defaults (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        _extras_parser().print_help()
        print("\nrl_zoo3 flags:")
    register()
    import rl_zoo3.train as zoo_train

    with ExitStack() as stack:
        extras = _extras_parser().parse_known_args(argv)[0]
        checkpoint, run_argv, trained = None, _drop_flags(argv, ["-i", "--trained-agent"]), []
        if extras.resume is not None:
            run_argv, agent, checkpoint = _resume_argv(argv, extras, stack)
            trained = ["--trained-agent", agent]
            extras = _extras_parser().parse_known_args(run_argv)[0]
        if extras.checkpoint_keep < 1:
            raise SystemExit(f"--checkpoint-keep must be a positive integer, got {extras.checkpoint_keep}")
        if (extras.checkpoint_freq > 0 or checkpoint is not None) and _value_parser().parse_known_args(run_argv)[0].optimize_hyperparameters:
            raise SystemExit("--checkpoint-freq and --resume do not apply to -optimize")
        zoo_args = zoo_argv(run_argv if checkpoint is not None else argv)  # our flags are consumed there
        manager = _checkpointing_manager(zoo_train.ExperimentManager, extras, run_argv, checkpoint)
        stack.enter_context(_argv(zoo_args + trained))
        stack.enter_context(warnings.catch_warnings())
        # expected: the training env is wrapped in the learned-reward VecEnv, the eval env is not
        warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
        saved_manager = zoo_train.ExperimentManager
        zoo_train.ExperimentManager = manager  # rl_zoo3's train() looks the class up at call time
        try:
            zoo_train.train()
        finally:
            zoo_train.ExperimentManager = saved_manager


if __name__ == "__main__":
    main()
