"""Trace a discrete SoBiRL / DRLHF / SAC agent's policy entropy while it trains (when does it collapse?).

An SB3 callback for rl_zoo3's ``callback`` hyperparameter.  Every ``every`` env steps after the
first update it takes ``n_states`` states from the replay buffer and appends a CSV row: the mean
policy entropy (uniform over Pong's 6 actions: log 6 = 1.79 nats), the mean largest action
probability, the entropy coefficient, the critic's mean Q and mean spread over actions, the actor's
mean logit range, (SoBiRL / DRLHF) the learned reward's mean spread over actions, and the mean
and standard deviation of the rewards stored in the replay buffer (relabelled by the reward model),
and (SoBiRL / DRLHF) the last outer step's time step, temperature ``tau`` and gradient norms of the
direct and second hypergradient terms (``outer/direct_grad_norm`` and ``outer/second_term_grad_norm``).

    PYTHONPATH=.:benchmark/diagnostics python -m agents.train --algo sobirl --env PongNoFrameskip-v4 \\
        -n 4000 --seed 0 --eval-freq -1 -f /tmp/trace \\
        -params learning_starts:1000 hypergrad_warmup:2000 outer_freq:1000 buffer_size:10000 n_queries:100 \\
        "callback:[{'entropy_trace.EntropyTrace': {'path': '/tmp/trace/sobirl.csv'}}]"

Summarise traces over windows of env steps (minimum entropy, share of rows under 0.1 nats, and
how far the actor's logit range is from the soft-greedy ``q_spread / ent_coef``: 1 when the
actor tracks ``softmax(Q / alpha)``, far above 1 when it has overshot its critic):

    python benchmark/diagnostics/entropy_trace.py /tmp/trace/sobirl.csv --windows 5000,10000,12000,16000,30000
"""

import argparse
import csv
import os

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

FIELDS = ["step", "n_updates", "entropy", "max_prob", "ent_coef", "q_mean", "q_spread", "logit_range", "reward_spread", "buffer_reward_mean", "buffer_reward_std",
          "last_outer_step", "tau", "direct_grad_norm", "second_term_grad_norm"]


class EntropyTrace(BaseCallback):
    """Append the policy's entropy statistics on replay states to ``path`` every ``every`` env steps."""

    def __init__(self, path: str, every: int = 100, n_states: int = 256, verbose: int = 0) -> None:
        super().__init__(verbose)
        if every <= 0 or n_states <= 0:
            raise ValueError(f"every and n_states must be positive, got every={every}, n_states={n_states}")
        self.path, self.every, self.n_states = path, int(every), int(n_states)
        self._rng = np.random.default_rng(0)

    def _on_training_start(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerow(FIELDS)

    def _on_step(self) -> bool:
        model = self.model
        if self.num_timesteps % self.every != 0 or getattr(model, "_n_updates", 0) == 0:
            return True
        buffer = model.replay_buffer
        n = buffer.size()
        idx = self._rng.integers(0, n, size=self.n_states)
        obs_np = buffer.observations[idx, 0]
        obs = th.as_tensor(obs_np, device=model.device)
        with th.no_grad():
            probs, log_probs = model.actor.action_probs(obs)
            q = model.critic.min_q(obs)
            row = {
                "step": self.num_timesteps,
                "n_updates": model._n_updates,
                "entropy": float(-(probs * log_probs).sum(1).mean()),
                "max_prob": float(probs.max(1).values.mean()),
                "ent_coef": model.alpha,
                "q_mean": float(q.mean()),
                "q_spread": float((q.max(1).values - q.min(1).values).mean()),
                # log-softmax shifts each row's logits by one constant: same range, no second forward pass
                "logit_range": float((log_probs.max(1).values - log_probs.min(1).values).mean()),
                "reward_spread": float("nan"),
                "buffer_reward_mean": float(buffer.rewards[:n].mean()),
                "buffer_reward_std": float(buffer.rewards[:n].std()),
                "last_outer_step": getattr(model, "_last_outer_step", float("nan")),
                "tau": model._tau() if hasattr(model, "_tau") else float("nan"),
            }
            row["direct_grad_norm"], row["second_term_grad_norm"] = getattr(model, "_term_norms", (float("nan"),) * 2)
            reward_model = getattr(model, "reward_model", None)
            if reward_model is not None:
                A = probs.shape[1]
                acts = th.arange(A, device=obs.device).repeat(obs.shape[0])
                r = reward_model(obs.repeat_interleave(A, 0), acts).reshape(-1, A)
                row["reward_spread"] = float((r.max(1).values - r.min(1).values).mean())
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(row)
        return True


def summarise(path: str, windows: list) -> list:
    """One dict per window ``(lo, hi]`` of env steps with rows in the trace at ``path``."""
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    out = []
    for lo, hi in zip(windows[:-1], windows[1:]):
        sel = [r for r in rows if lo < r["step"] <= hi]
        if not sel:
            continue
        entropy = np.array([r["entropy"] for r in sel])
        ratio = np.array([r["logit_range"] * r["ent_coef"] / r["q_spread"] for r in sel])
        alpha = np.array([r["ent_coef"] for r in sel])
        out.append({"window": f"({lo}, {hi}]", "rows": len(sel), "min_entropy": float(entropy.min()),
                    "share_low": float((entropy < 0.1).mean()), "median_ratio": float(np.median(ratio)),
                    "max_ratio": float(ratio.max()), "alpha_min": float(alpha.min()), "alpha_max": float(alpha.max())})
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Summarise EntropyTrace CSVs over windows of env steps.")
    parser.add_argument("paths", nargs="+", help="trace CSVs written by EntropyTrace")
    parser.add_argument("--windows", default="0,5000,10000,20000,50000,100000",
                        help="comma-separated window edges in env steps (default: %(default)s)")
    args = parser.parse_args()
    edges = [int(x) for x in args.windows.split(",")]
    if len(edges) < 2 or edges != sorted(edges):
        parser.error(f"--windows needs at least two increasing edges, got {args.windows!r}")
    for trace in args.paths:
        print(trace)
        for row in summarise(trace, edges):
            print("  {window:>16}  rows {rows:3d}  min entropy {min_entropy:.2g}  share < 0.1 nats {share_low:.2f}  "
                  "logit range / (Q spread / alpha): median {median_ratio:.2f}, max {max_ratio:.1f}  "
                  "alpha {alpha_min:.3f}-{alpha_max:.3f}".format(**row))
