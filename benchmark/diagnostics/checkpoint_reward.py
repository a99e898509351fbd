"""Does a bilevel checkpoint's learned reward agree with the TRUE reward on its own policy's data?

Loads checkpoints written by ``agents.train`` / ``agents.benchmark`` (``checkpoint_*.pt``), rolls
each one's stochastic policy for ``--steps`` env steps in a fresh ``gym.make(env)`` (the TRUE
reward, no wrapper) and reports, per checkpoint:

* the per-step Pearson correlation of the learned reward with the TRUE reward;
* the mean / std of both (their ratio says how much the reward pays for staying alive against
  its per-step spread: with absorbing states, ``r(absorbing) = 0`` (``birl.feedback.losses``),
  so a learned reward whose mean is small against its spread barely penalises falling over);
* the mean of both on terminal steps (the transition into the absorbing state);
* the least-squares fit ``learned ~ intercept + slope * TRUE`` and ``extra_alive`` = intercept /
  slope: what the learned reward pays every transition on top of the TRUE reward, in TRUE units
  (on Hopper, whose TRUE reward is ``1 + forward velocity - control cost``, 0.5 means staying
  alive is paid 1.5 per step against the forward velocity's 1: standing still is overvalued).

``--replay-buffer FILE`` takes the transitions from a checkpoint's replay-buffer sidecar
(``checkpoint_*.replay_buffer.pkl``, an :class:`agents.buffers.BilevelReplayBuffer` with its TRUE
rewards; ``--rows LO:HI`` picks insertion rows) instead of fresh rollouts: every policy the run
has had, not just the last one.

    python benchmark/diagnostics/checkpoint_reward.py --env Hopper-v5 \\
        benchmark/zoo_logs/mujoco/Hopper-v5/msobirl_seed0_*/checkpoints/checkpoint_000000050000.pt

Prints one JSON line per checkpoint.  Vector observations without VecNormalize only.

``--cross N`` asks instead whether a later reward still ranks an earlier policy's behaviour above a
later one's (did the reward move away from hopping, or did the inner level lose it?): it rolls
each checkpoint's *deterministic* policy for ``N`` episodes (as the TRUE evaluations do) and
scores every policy's episodes with every checkpoint's reward model, one JSON line per
(policy, reward) pair: the mean episode return under the learned and the TRUE reward, each
undiscounted and discounted from the first step with ``--gamma`` (what SAC maximises), and the
mean episode length (the transitions after termination pay ``r(absorbing) = 0``).

    python benchmark/diagnostics/checkpoint_reward.py --env Hopper-v5 --cross 5 ckpt_10k.pt ckpt_20k.pt
"""

import argparse
import json
import pickle
from typing import List

import gymnasium as gym
import numpy as np
import torch as th

from agents.checkpoint import load_checkpoint
from birl.feedback import Demonstrations


def rollout(model, env_id: str, steps: int, seed: int) -> dict:
    """``steps`` transitions of ``model``'s stochastic policy in ``gym.make(env_id)``, episode by
    episode through :meth:`birl.feedback.Demonstrations.collect` (the last one cut at ``steps``)."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    env = gym.make(env_id)
    episodes = []
    while (done := sum(map(len, episodes))) < steps:
        episodes += Demonstrations.collect(model, env, 1, seed=None if episodes else seed, deterministic=False,
                                           max_steps=steps - done).trajectories
    env.close()
    cat = lambda parts: np.concatenate(parts).astype(np.float32)  # noqa: E731
    return {
        "obs": cat([t.obs[:-1] for t in episodes]),
        "acts": cat([t.acts for t in episodes]),
        "next_obs": cat([t.obs[1:] for t in episodes]),
        "true": cat([t.rewards for t in episodes]),
        "terminal": cat([np.arange(len(t)) == len(t) - 1 if t.terminated else np.zeros(len(t), bool) for t in episodes]),
    }


def load_buffer(path: str):
    """A pickled :class:`agents.buffers.BilevelReplayBuffer` (a checkpoint's replay-buffer sidecar)."""
    with open(path, "rb") as f:
        buf = pickle.load(f)
    if not hasattr(buf, "window"):
        raise ValueError(f"replay_buffer: {path!r} holds a {type(buf).__name__}, not a BilevelReplayBuffer with TRUE rewards")
    return buf


def buffer_data(model, buf, rows: str = None) -> dict:
    """:func:`rollout`'s dict from ``buf``'s first env, insertion rows ``"LO:HI"`` (default: all
    stored), actions in env units as the reward sees them."""
    n = buf.size()
    try:
        lo, hi = (0, n) if rows is None else (int(x) for x in rows.split(":"))
    except ValueError:
        lo, hi = -1, -1  # malformed: reported below
    if not 0 <= lo < hi <= n:
        raise ValueError(f"rows must be LO:HI with 0 <= LO < HI <= {n} (rows stored), got {rows!r}")
    win = {k: v[:, 0] for k, v in buf.window(np.arange(lo, hi)).items()}
    return {
        "obs": win["obs"].astype(np.float32),
        "acts": np.asarray(model._env_actions(win["acts"]), dtype=np.float32),
        "next_obs": win["next_obs"].astype(np.float32),
        "true": win["true_rewards"],
        "terminal": win["terminations"],
    }


def _learned(model, obs, acts, next_obs) -> np.ndarray:
    """``model``'s learned reward on a batch of transitions, as float64 ``[B]``."""
    as_t = lambda x: th.as_tensor(np.asarray(x, dtype=np.float32), device=model.device)  # noqa: E731
    with th.no_grad():
        r = model.reward_model(as_t(obs), as_t(acts), as_t(next_obs))
    return r.reshape(-1).cpu().numpy().astype(np.float64)


def reward_agreement(model, data: dict) -> dict:
    """Correlation, mean / std and terminal-step means of the learned and the TRUE reward."""
    learned = _learned(model, data["obs"], data["acts"], data["next_obs"])
    true, terminal = data["true"].astype(np.float64), data["terminal"] > 0
    out = {"corr": float(np.corrcoef(learned, true)[0, 1]), "n_terminal": int(terminal.sum())}
    for name, r in (("true", true), ("learned", learned)):
        out[f"{name}_mean"], out[f"{name}_std"] = float(r.mean()), float(r.std())
        out[f"{name}_mean_over_std"] = float(r.mean() / r.std())
        out[f"{name}_terminal_mean"] = float(r[terminal].mean()) if terminal.any() else None
    slope, intercept = np.polyfit(true, learned, 1)
    out["fit_slope"], out["fit_intercept"], out["extra_alive"] = float(slope), float(intercept), float(intercept / slope)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def learned_rewards(model, trajectory) -> np.ndarray:
    """``model``'s learned reward on each transition of one :class:`birl.feedback.Trajectory`."""
    return _learned(model, trajectory.obs[:-1], trajectory.acts, trajectory.obs[1:])


def episode_scores(model, episodes, gamma: float) -> dict:
    """Mean over ``episodes`` of their learned and TRUE returns (undiscounted and ``gamma``-discounted
    from the first step; learned: under ``model``'s reward) and of their length."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if not episodes:
        raise ValueError("episodes must not be empty")
    learned = [learned_rewards(model, t) for t in episodes]
    discounted = lambda rewards: float(np.mean([(r * gamma ** np.arange(len(r))).sum() for r in rewards]))  # noqa: E731
    out = {
        "learned_return": float(np.mean([r.sum() for r in learned])),
        "learned_discounted_return": discounted(learned),
        "true_return": float(np.mean([np.sum(t.rewards) for t in episodes])),
        "true_discounted_return": discounted([t.rewards for t in episodes]),
        "length": float(np.mean([len(t) for t in episodes])),
    }
    return {k: round(v, 3) for k, v in out.items()}


def cross_scores(models: dict, env_id: str, n_episodes: int, seed: int, gamma: float) -> List[dict]:
    """Every (policy, reward) pair of ``models`` (``{name: agent}``): :func:`episode_scores` of the
    policy's ``n_episodes`` deterministic episodes under the reward's model."""
    rows = []
    for policy_name, policy in models.items():
        env = gym.make(env_id)
        episodes = Demonstrations.collect(policy, env, n_episodes, seed=seed, deterministic=True).trajectories
        env.close()
        for reward_name, reward in models.items():
            rows.append({"policy": policy_name, "reward": reward_name, **episode_scores(reward, episodes, gamma)})
    return rows


def _load(path: str):
    model = load_checkpoint(path, replay_buffer=False).load_agent(device="cpu")  # the sidecar is not needed
    if getattr(model, "reward_model", None) is None:
        raise ValueError(f"checkpoints: {path!r} holds a {type(model).__name__} without a learned reward model")
    return model


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint_*.pt files")
    parser.add_argument("--env", required=True, help="Gymnasium env id the checkpoints were trained on")
    parser.add_argument("--steps", type=int, default=5000, help="env steps of the policy per checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cross", type=int, default=0, metavar="N",
                        help="score every checkpoint's N deterministic episodes with every checkpoint's reward")
    parser.add_argument("--replay-buffer", help="score the transitions of this replay-buffer pickle instead of rollouts")
    parser.add_argument("--rows", help="LO:HI insertion rows of --replay-buffer (default: all)")
    parser.add_argument("--gamma", type=float, default=0.99, help="discount of the --cross discounted return")
    args = parser.parse_args(argv)
    if args.cross < 0:
        raise ValueError(f"cross must be a non-negative number of episodes, got {args.cross}")
    if args.cross:
        models = {f"{m.num_timesteps}": m for m in map(_load, args.checkpoints)}
        for row in cross_scores(models, args.env, args.cross, args.seed, args.gamma):
            print(json.dumps(row), flush=True)
        return
    buf = load_buffer(args.replay_buffer) if args.replay_buffer else None  # read once for every checkpoint
    for path in args.checkpoints:
        model = _load(path)
        row = {"checkpoint": path, "num_timesteps": int(model.num_timesteps)}
        if buf is not None:
            data = buffer_data(model, buf, args.rows)
            row.update(replay_buffer=args.replay_buffer, rows=args.rows)
        else:
            data = rollout(model, args.env, args.steps, args.seed)
            row.update(steps=args.steps)
        row.update(reward_agreement(model, data))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
