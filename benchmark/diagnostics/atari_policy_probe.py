"""Probe a trained discrete SoBiRL / DRLHF / SAC Atari agent: is its policy still stochastic?

Loads a saved agent (rl_zoo3's ``<run>/<algo>/<env>_1/<env>.zip``), plays ``--steps`` env steps
with sampled actions in the standard Atari wrappers (frame stack 4, unclipped reward) and prints
the policy's mean entropy on the visited states (uniform over Pong's 6 actions: log 6 = 1.79
nats), the mean largest action probability, the entropy coefficient, the critic's mean Q and its
mean spread over actions, and (for SoBiRL / DRLHF) the learned reward's statistics there.

    python benchmark/diagnostics/atari_policy_probe.py --algo sobirl \\
        --path benchmark/zoo_logs/atari/PongNoFrameskip-v4/<run>/sobirl/PongNoFrameskip-v4_1/PongNoFrameskip-v4.zip
"""

import argparse

import ale_py
import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage

from agents.discrete_sac import DiscreteSAC
from agents.sobirl import DiscreteDRLHF, DiscreteSoBiRL

CLASSES = {"sobirl": DiscreteSoBiRL, "drlhf": DiscreteDRLHF, "sac": DiscreteSAC}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(CLASSES), required=True)
    parser.add_argument("--path", required=True, help="the saved agent (.zip)")
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    gym.register_envs(ale_py)
    model = CLASSES[args.algo].load(args.path, device="cpu", buffer_size=1, optimize_memory_usage=False)
    env = VecTransposeImage(VecFrameStack(make_atari_env(args.env, n_envs=1, seed=args.seed, wrapper_kwargs={"clip_reward": False}), 4))
    obs, frames, actions = env.reset(), [], []
    for _ in range(args.steps):
        action, _ = model.predict(obs, deterministic=False)
        frames.append(obs[0])
        actions.append(action[0])
        obs, *_ = env.step(action)
    env.close()
    x = model.policy.obs_to_tensor(np.array(frames))[0]
    with th.no_grad():
        probs, log_probs = model.policy.actor.action_probs(x)
        q = model.policy.critic(x)
        q = q[0] if isinstance(q, (tuple, list)) else q
        print(f"policy entropy {float(-(probs * log_probs).sum(1).mean()):.3g} nats (uniform: {np.log(probs.shape[1]):.2f}); "
              f"mean largest action probability {float(probs.max(1).values.mean()):.3f}")
        print(f"entropy coefficient {model.alpha:.4g}; "
              f"Q mean {float(q.mean()):.2f}, mean spread over actions {float((q.max(1).values - q.min(1).values).mean()):.2f}")
        if getattr(model, "reward_model", None) is not None:
            r = model.reward_model(th.as_tensor(np.array(frames)), th.as_tensor(np.array(actions)))
            print(f"learned reward: mean {float(r.mean()):.3f}, std {float(r.std()):.3f}, min {float(r.min()):.3f}, max {float(r.max()):.3f}")


if __name__ == "__main__":
    main()
