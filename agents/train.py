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
  one CPU thread).

Examples::

    python -m agents.train --algo sobirl --env Hopper-v5 -n 200000 --seed 0
    python -m agents.train --algo drlhf --env PongNoFrameskip-v4 -params n_queries:1000
    python -m agents.train --algo sobirl --env Pendulum-v1 -n 20000 -optimize \\
        --n-trials 20 --storage sqlite:///tuning.db --study-name pendulum_sobirl

Models land in rl_zoo3's layout, ``<log-folder>/<algo>/<env>_<run>/`` (``<env>.zip``, the
``<env>/config.yml`` of the hyperparameters used, monitor files of TRUE episode returns and
``evaluations.npz`` of the TRUE-reward evaluations).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

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


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run rl_zoo3's training with our algorithms registered and our defaults (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        _extras_parser().print_help()
        print("\nrl_zoo3 flags:")
    register()
    from rl_zoo3.train import train

    with _argv(zoo_argv(argv)), warnings.catch_warnings():
        # expected: the training env is wrapped in the learned-reward VecEnv, the eval env is not
        warnings.filterwarnings("ignore", message="Training and eval env are not of the same type")
        train()


if __name__ == "__main__":
    main()
