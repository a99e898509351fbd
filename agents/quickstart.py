"""Quick start: train SoBiRL on Pendulum-v1 from synthetic preferences, report TRUE return.

    python -m agents.quickstart [--algo sobirl|drlhf] [--steps 15000] [--queries 500] [--seed 0]

Trains with a progress bar, then prints the mean TRUE return of the deterministic policy over
10 evaluation episodes (the env's own reward, never the learned one) and the reward model's
accuracy on fresh held-out preference pairs from the trained policy's rollouts.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from agents.sobirl import DRLHF, SoBiRL
from birl.feedback import Demonstrations, SegmentBatch, SyntheticTeacher, preference_accuracy, segment_returns

ALGOS = {"sobirl": SoBiRL, "drlhf": DRLHF}


#: action-noise levels of the mixed-quality held-out set (probability of a uniform random action)
MIXED_NOISE = (0.0, 0.25, 0.5, 1.0)


def heldout_preference_accuracy(
    model, env_id: str, n_pairs: int = 500, horizon: int = 25, seed: int = 123, noise: Sequence[float] = (0.0,),
) -> float:
    """Accuracy of ``model.reward_model`` on new pairs of fragments of fresh rollouts, labelled by a
    noiseless teacher on the TRUE reward.

    ``noise`` lists action-noise levels ``eps``: for each, 5 episodes in which the policy's
    (stochastic) action is replaced by a uniform random one with probability ``eps``.  The
    default ``(0.0,)`` pairs fragments of the trained policy alone: once it is good they have
    near-equal true returns, a hard set.  :data:`MIXED_NOISE` spans good to random behaviour,
    the range a reward model must rank (and the range training queries came from).
    Fragments run past terminations into the absorbing state when the agent's own do.
    """
    rng = np.random.default_rng(seed)
    env = gym.make(env_id)
    env.action_space.seed(seed)
    batches = []
    for k, eps in enumerate(noise):
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"noise levels must lie in [0, 1], got {eps!r}")

        def act(obs, eps=eps):
            if rng.random() < eps:
                return env.action_space.sample()
            return model.predict(obs, deterministic=False)[0]

        rollouts = Demonstrations.collect(act, env, n_episodes=5, seed=seed + 1000 * k)
        batches.append(rollouts.sample_segments(horizon, 2 * n_pairs, rng=rng, replace=True, absorbing=getattr(model, "absorbing_states", False)))
    segs = SegmentBatch.concatenate(batches)
    order = rng.permutation(len(segs))[: 2 * n_pairs]
    s1, s2 = segs[order[:n_pairs]], segs[order[n_pairs:]]
    labels, _ = SyntheticTeacher().label(s1, s2)
    with th.no_grad():
        r1, r2 = segment_returns(model.reward_model, s1), segment_returns(model.reward_model, s2)
    return preference_accuracy(r1, r2, labels)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), default="sobirl")
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=15_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (small MLPs run fastest on one)")
    parser.add_argument("--no-progress-bar", action="store_true")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)

    env = gym.make(args.env)
    model = ALGOS[args.algo](
        "MlpPolicy", env, feedback=SyntheticTeacher(seed=args.seed), n_queries=args.queries,
        outer_freq=1000, learning_starts=1000, seed=args.seed, verbose=0,
    )
    start = time.time()
    model.learn(args.steps, progress_bar=not args.no_progress_bar)
    wall = time.time() - start
    mean_ret, std_ret = evaluate_policy(model, Monitor(gym.make(args.env)), n_eval_episodes=10, deterministic=True)
    result = {
        "algo": args.algo,
        "env": args.env,
        "steps": args.steps,
        "labels": len(model.preferences),
        "true_return_mean": float(mean_ret),
        "true_return_std": float(std_ret),
        "train_pref_accuracy": model.preference_accuracy(),
        "heldout_pref_accuracy": heldout_preference_accuracy(model, args.env),
        "mixed_pref_accuracy": heldout_preference_accuracy(model, args.env, noise=MIXED_NOISE),
        "wall_time_s": wall,
    }
    print(
        f"{args.algo} on {args.env}: TRUE return {mean_ret:.1f} +/- {std_ret:.1f} over 10 episodes | "
        f"preference accuracy {result['train_pref_accuracy']:.3f} (train labels), "
        f"{result['heldout_pref_accuracy']:.3f} (held-out pairs of its own rollouts), "
        f"{result['mixed_pref_accuracy']:.3f} (held-out pairs of good-to-random rollouts) | {result['labels']} labels, "
        f"{args.steps} env steps, {wall:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
