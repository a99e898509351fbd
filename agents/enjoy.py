"""Replay (and record) a trained agent: ``python -m agents.enjoy --algo sobirl --env ENV_ID [...]``.

Finds the model in rl_zoo3's layout (``<folder>/<algo>/<env>_<exp-id>/``, as written by
:mod:`agents.train`), rebuilds the test env with rl_zoo3's helpers from the saved
``config.yml`` (env wrappers, frame stacking, normalisation statistics), plays ``-n`` steps
and prints the TRUE episode returns (the env's own reward; the learned reward is not used).

``--record`` writes an mp4 of the first ``-n`` steps with Stable-Baselines3's
``VecVideoRecorder``; it needs ``moviepy`` (``pip install moviepy``, part of the ``zoo`` extra).

Examples::

    python -m agents.enjoy --algo sobirl --env Hopper-v5 -f logs --load-best -n 1000
    python -m agents.enjoy --algo drlhf --env PongNoFrameskip-v4 -f logs --record -o videos
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="sobirl", help="algorithm name used at training (default: sobirl)")
    parser.add_argument("--env", required=True, help="environment id")
    parser.add_argument("-f", "--folder", default="logs", help="log folder of agents.train (default: logs)")
    parser.add_argument("--exp-id", type=int, default=0, help="run id (0: latest, -1: no run sub-folder)")
    parser.add_argument("--load-best", action="store_true", help="load best_model.zip (best TRUE evaluation)")
    parser.add_argument("--load-checkpoint", type=int, default=None, help="load the checkpoint of this many steps")
    parser.add_argument("--load-last-checkpoint", action="store_true", help="load the last checkpoint")
    parser.add_argument("-n", "--n-timesteps", type=int, default=1000, help="env steps to play (default: 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deterministic", action="store_true", help="greedy actions (default except on Atari)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions (default on Atari)")
    parser.add_argument("--render", action="store_true", help="open a window (render_mode='human')")
    parser.add_argument("--record", action="store_true", help="record an mp4 of the played steps (needs moviepy)")
    parser.add_argument("-o", "--output-folder", default=None, help="video folder (default: <run>/videos)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return parser


def require_video_support() -> None:
    """Raise a clear ``ImportError`` when video recording dependencies are missing."""
    try:
        import moviepy  # noqa: F401
    except ImportError as err:
        raise ImportError("--record needs moviepy (and its ffmpeg): pip install moviepy") from err


def _make_env(args: argparse.Namespace, env_name: Any, log_path: str) -> Any:
    """rl_zoo3's test env from the run's saved hyperparameters, optionally recording."""
    from rl_zoo3.utils import create_test_env, get_saved_hyperparams

    stats_path = os.path.join(log_path, env_name)
    hyperparams, maybe_stats_path = get_saved_hyperparams(stats_path, test_mode=True)
    hyperparams.pop("env_kwargs", None)  # the run's env kwargs are read from args.yml below
    env_kwargs = _saved_env_kwargs(stats_path)
    if args.record:
        env_kwargs["render_mode"] = "rgb_array"
    elif args.render:
        env_kwargs["render_mode"] = "human"
    env = create_test_env(
        env_name.gym_id, n_envs=1, stats_path=maybe_stats_path, seed=args.seed, log_dir=None,
        should_render=args.render, hyperparams=hyperparams, env_kwargs=env_kwargs,
    )
    if args.record:
        from stable_baselines3.common.vec_env import VecVideoRecorder

        folder = args.output_folder or os.path.join(log_path, "videos")
        env = VecVideoRecorder(
            env, folder, record_video_trigger=lambda step: step == 0, video_length=args.n_timesteps,
            name_prefix=f"{args.algo}-{env_name}",
        )
    return env


def _check_rendering(env: Any, env_id: str) -> None:
    """Render once before playing, so that a missing renderer fails with a clear message."""
    from gymnasium.error import DependencyNotInstalled

    try:
        env.reset()
        env.render()
    except (DependencyNotInstalled, ImportError) as err:
        env.close()
        raise ImportError(f"--record cannot render {env_id}: {err}") from err


def _saved_env_kwargs(stats_path: str) -> Dict[str, Any]:
    """The env kwargs of the training run (``args.yml``), empty when absent."""
    import yaml

    path = os.path.join(stats_path, "args.yml")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        saved = yaml.load(f, Loader=yaml.UnsafeLoader)  # rl_zoo3 writes it with python tags
    return dict(saved.get("env_kwargs") or {})


def play(model: Any, env: Any, n_timesteps: int, deterministic: bool) -> List[float]:
    """Play ``n_timesteps`` steps; return the TRUE return of every finished episode (Monitor)."""
    returns: List[float] = []
    obs = env.reset()
    for _ in range(n_timesteps):
        action, _ = model.predict(obs, deterministic=deterministic)
        obs, _, _, infos = env.step(action)
        returns += [float(info["episode"]["r"]) for info in infos if "episode" in info]
    return returns


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Replay a trained agent; returns ``{"model_path", "episode_returns", "video_folder"}``."""
    args = build_parser().parse_args(argv)
    if args.n_timesteps < 1:
        raise SystemExit(f"-n/--n-timesteps must be positive, got {args.n_timesteps}")
    if args.record:
        require_video_support()
    from huggingface_sb3 import EnvironmentName
    from rl_zoo3.exp_manager import ExperimentManager
    from rl_zoo3.utils import ALGOS, get_model_path

    from agents.zoo import register

    register()
    if args.algo not in ALGOS:
        raise SystemExit(f"--algo must be one of {sorted(ALGOS)}, got {args.algo!r}")
    env_name = EnvironmentName(args.env)
    _, model_path, log_path = get_model_path(
        args.exp_id, args.folder, args.algo, env_name, args.load_best, args.load_checkpoint, args.load_last_checkpoint
    )
    env = _make_env(args, env_name, log_path)
    if args.record:
        _check_rendering(env, args.env)
    # a one-transition buffer: replaying needs no replay memory
    model = ALGOS[args.algo].load(model_path, device=args.device, buffer_size=1, optimize_memory_usage=False)
    stochastic = args.stochastic or (ExperimentManager.is_atari(env_name.gym_id) and not args.deterministic)
    try:
        returns = play(model, env, args.n_timesteps, deterministic=not stochastic)
    finally:
        env.close()
    if returns:
        print(f"{len(returns)} episodes, TRUE return {np.mean(returns):.2f} +/- {np.std(returns):.2f}")
    else:
        print(f"no episode finished within {args.n_timesteps} steps")
    video = getattr(env, "video_folder", None)
    if video is not None:
        print(f"video written to {video}")
    return {"model_path": model_path, "episode_returns": returns, "video_folder": video}


if __name__ == "__main__":
    main()
