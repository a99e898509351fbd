"""M-SoBiRL's model-based inner level alone on Hopper-v5: MBPO-style SAC trained on a FIXED
reward close to the TRUE one, with the outer level switched off.

Answers whether the inner level of ``zoo_configs/msobirl.yml``'s Hopper entry (ensemble,
rollout schedule, 10 SAC updates per env step, known termination rule) reaches a normalised 0.9
early when the reward is right; if it does, a slow M-SoBiRL run is down to its reward learning.

The reward is Hopper-v5's with the next observation's x-velocity (``obs[5]``, end of step) in
place of the step's mean x-velocity: ``r = v_x(s') + 1 - 1e-3 |a|^2``.  Its per-step correlation
with the TRUE reward is printed at the end.

    python benchmark/diagnostics/hopper_mbpo_true_reward.py --seed 0 --steps 30000
    python benchmark/diagnostics/hopper_mbpo_true_reward.py --seed 2 -params rollout_batch_size:100000

``-params KEY:VALUE ...`` overrides entries of the zoo config, as for ``agents.benchmark``.

Prints one JSON line per evaluation (5 deterministic episodes every 5,000 steps).
"""

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
import yaml
from rl_zoo3.utils import StoreDict
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy

from agents.msobirl import MSoBiRL
from agents.zoo import bilevel_kwargs
from birl.reward_models import RewardModel

ROOT = Path(__file__).resolve().parents[2]


class HopperReward(RewardModel):
    """``v_x(s') + 1 - 1e-3 |a|^2`` as a fixed linear reward model (no trainable parameters)."""

    use_next_obs = True

    def __init__(self) -> None:
        super().__init__()
        self.head = th.nn.Linear(3, 1, bias=False)
        with th.no_grad():
            self.head.weight.copy_(th.tensor([[1.0, 1.0, -1e-3]]))
        self.head.weight.requires_grad_(False)
        self._init_output(1.0, 0.0, None)

    def features(self, obs, act, next_obs=None):
        return th.stack([next_obs[:, 5], th.ones_like(next_obs[:, 5]), (act**2).sum(1)], 1).float()

    def config(self):
        return {}


class FixedReward(MSoBiRL):
    """M-SoBiRL whose outer level never runs: the reward model stays as given."""

    def _outer_step(self) -> None:
        pass


class Evaluate(BaseCallback):
    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self.env, self.start = every, gym.make("Hopper-v5"), time.time()

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            mean, std = evaluate_policy(self.model, self.env, n_eval_episodes=5, deterministic=True, warn=False)
            print(json.dumps({"step": self.num_timesteps, "true_return": round(float(mean), 1), "std": round(float(std), 1),
                              "wall_s": round(time.time() - self.start)}), flush=True)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--eval-every", type=int, default=5_000)
    parser.add_argument("-params", "--hyperparams", type=str, nargs="+", action=StoreDict, default={},
                        help="zoo-entry overrides, as for agents.benchmark (e.g. target_entropy:-1)")
    args = parser.parse_args()
    th.set_num_threads(1)
    hyperparams = yaml.safe_load((ROOT / "zoo_configs" / "msobirl.yml").read_text())["Hopper-v5"]
    for key in ("n_timesteps", "policy", "reward_model_kwargs"):
        hyperparams.pop(key, None)
    hyperparams.update(args.hyperparams)
    print(json.dumps({"seed": args.seed, "overrides": args.hyperparams}), flush=True)
    env = gym.make("Hopper-v5")
    kwargs = bilevel_kwargs(hyperparams, env, seed=args.seed)
    model = FixedReward("MlpPolicy", env, reward_model=HopperReward(), seed=args.seed, verbose=0, **{k: v for k, v in kwargs.items() if k != "reward_model"})
    model.learn(args.steps, callback=Evaluate(args.eval_every))
    buf = model.replay_buffer
    n = buf.buffer_size if buf.full else buf.pos
    print(json.dumps({"corr_with_true_reward": round(float(np.corrcoef(buf.rewards[:n, 0], buf.true_rewards[:n, 0])[0, 1]), 4)}))


if __name__ == "__main__":
    main()
