"""DiscreteSAC on CartPole-v1 with each actor loss: does ``forward_kl`` cost anything on an easy task?

Prints, per actor loss and seed, the mean TRUE return of 10 deterministic episodes every 5k steps
up to 20k, and the final entropy coefficient:

    python benchmark/diagnostics/actor_loss_cartpole.py --seeds 0 1 2
"""

import argparse

import gymnasium as gym
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from agents.discrete_sac import ACTOR_LOSSES, DiscreteSAC


def run(actor_loss: str, seed: int, steps: int = 20_000, every: int = 5_000) -> list:
    model = DiscreteSAC("MlpPolicy", "CartPole-v1", learning_starts=1000, batch_size=64,
                        policy_kwargs=dict(net_arch=[64, 64]), seed=seed, actor_loss=actor_loss)
    returns = []
    for _ in range(steps // every):
        model.learn(every, reset_num_timesteps=False)
        mean_return, _ = evaluate_policy(model, Monitor(gym.make("CartPole-v1")), n_eval_episodes=10, deterministic=True)
        returns.append(round(float(mean_return), 1))
    return returns, model.alpha


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    th.set_num_threads(1)
    for seed in args.seeds:
        for actor_loss in ACTOR_LOSSES:
            returns, alpha = run(actor_loss, seed)
            print(f"{actor_loss} seed {seed}: {returns} (alpha {alpha:.3f})", flush=True)
