"""How well a bilevel agent's reward model fits after each outer step, and after more reward steps.

Trains a Hopper-v5 (or any Box env) agent from its zoo entry with the benchmark suite's label
budget (``--queries`` over ``--budget`` env steps, so the query schedule matches a full run) up
to ``--steps``, and after every outer step reports for the agent's reward model and for copies
of it given ``--extra`` more Bradley-Terry steps (same batch size, step size and clipping):

* train accuracy over all labels so far;
* held-out accuracy on 500 fresh pairs of segments from the last ``outer_freq`` transitions,
  labelled on the TRUE reward (as the synthetic teacher does with ``beta = inf``);
* the per-step Pearson correlation of the learned reward with the TRUE reward on those
  transitions.

Answers whether ``reward_steps`` per outer step leaves the reward model under-fitted early in a
run (what the policy then learns from).  The inner level is the zoo entry's; ``--algo sobirl``
with ``estimator='none'`` (the default here) is the cheapest and has the same reward learning.

    python benchmark/diagnostics/reward_fit_probe.py --steps 20000 --extra 150,450

Prints one JSON line per outer step.
"""

import argparse
import copy
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch as th
import yaml
from rl_zoo3.utils import StoreDict
from stable_baselines3.common.callbacks import BaseCallback

from agents.msobirl import MSoBiRL
from agents.sobirl import SoBiRL
from agents.zoo import bilevel_kwargs
from birl.feedback import SyntheticTeacher, bradley_terry_nll, preference_accuracy, sample_segments_from_buffer, segment_returns

ROOT = Path(__file__).resolve().parents[2]


def _fit(reward_model, preferences, heldout, window) -> dict:
    """Train accuracy, held-out accuracy and per-step correlation with the TRUE reward."""
    s1, s2, y = preferences[np.arange(len(preferences))]
    h1, h2, hy = heldout
    with th.no_grad():
        train = preference_accuracy(segment_returns(reward_model, s1), segment_returns(reward_model, s2), y)
        held = preference_accuracy(segment_returns(reward_model, h1), segment_returns(reward_model, h2), hy)
        obs, acts, nxt, true = window
        r = reward_model(obs, acts, nxt).reshape(-1).numpy()
    return {"train_acc": round(train, 3), "heldout_acc": round(held, 3), "corr": round(float(np.corrcoef(r, true)[0, 1]), 3)}


def _more_steps(agent, n: int):
    """A copy of the agent's reward model after ``n`` more Bradley-Terry steps (its optimiser copied too)."""
    model = copy.deepcopy(agent.reward_model)
    opt = type(agent.reward_optimizer)(model.parameters())
    opt.load_state_dict(agent.reward_optimizer.state_dict())
    rng = np.random.default_rng(0)
    for _ in range(n):
        s1, s2, y = agent.preferences.sample(agent.reward_batch_size, rng=rng)
        loss = bradley_terry_nll(segment_returns(model, s1), segment_returns(model, s2), y, label_smoothing=agent.label_smoothing)
        opt.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
        opt.step()
    return model


def probe_class(base: type, extra: list) -> type:
    class Probe(base):
        def _outer_update(self) -> None:
            super()._outer_update()
            if len(self.preferences) == 0:
                return
            win = self._recent_window()
            n_env = win["obs"].shape[1]
            rng = np.random.default_rng(1)
            segs = sample_segments_from_buffer(win["obs"], win["acts"], win["true_rewards"], win["dones"], horizon=self.segment_length,
                                               n=1000, rng=rng, next_obs=win["next_obs"], replace=True)
            h1, h2 = segs[np.arange(500)], segs[np.arange(500, 1000)]
            hy, _ = SyntheticTeacher(beta=float("inf")).label(h1, h2)
            keep = hy != 0.5  # equal TRUE returns: no order to get right
            heldout = (h1[np.flatnonzero(keep)], h2[np.flatnonzero(keep)], hy[keep])
            flat = lambda a: th.as_tensor(a.reshape(-1, *a.shape[2:]), dtype=th.float32)  # noqa: E731
            window = (flat(win["obs"]), flat(win["acts"]), flat(win["next_obs"]), win["true_rewards"].reshape(-1))
            row = {"step": self.num_timesteps, "labels": len(self.preferences), "n_envs": n_env,
                   f"reward_steps={self.reward_steps}": _fit(self.reward_model, self.preferences, heldout, window)}
            for n in extra:
                row[f"+{n}"] = _fit(_more_steps(self, n), self.preferences, heldout, window)
            print(json.dumps(row), flush=True)

    return Probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--algo", choices=("sobirl", "msobirl"), default="sobirl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--budget", type=int, default=100_000, help="env steps the query schedule is spread over")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--extra", default="150,450", help="comma-separated numbers of extra reward steps")
    parser.add_argument("-params", "--hyperparams", type=str, nargs="+", action=StoreDict, default={},
                        help="zoo-entry overrides, as for agents.benchmark (e.g. learning_starts:5000)")
    args = parser.parse_args()
    th.set_num_threads(1)
    hyperparams = yaml.safe_load((ROOT / "zoo_configs" / f"{args.algo}.yml").read_text())[args.env]
    for key in ("n_timesteps", "policy"):
        hyperparams.pop(key, None)
    hyperparams.update(n_queries=args.queries, estimator="none")
    hyperparams.update(args.hyperparams)
    env = gym.make(args.env)
    kwargs = bilevel_kwargs(hyperparams, env, seed=args.seed)
    agent = probe_class(MSoBiRL if args.algo == "msobirl" else SoBiRL, [int(n) for n in args.extra.split(",") if n])(
        "MlpPolicy", env, seed=args.seed, verbose=0, **kwargs)

    class Stop(BaseCallback):
        def _on_step(self) -> bool:
            return self.num_timesteps < args.steps

    agent.learn(args.budget, callback=Stop())


if __name__ == "__main__":
    main()
