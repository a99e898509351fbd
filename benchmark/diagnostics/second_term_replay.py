"""Replay reward steps from a bilevel agent's checkpoint at several ``hypergrad_coef`` values.

From the checkpoint's reward model, optimiser, policy (and M-SoBiRL's dynamics), take the
outer level's reward steps again with the hypergradient's second term scaled by each coefficient
and report how well the reward model then fits its labels.  The last 64 labelled pairs stand in
for the on-policy pairs of the second term; the policy and the model stay fixed, fresh branched
rollouts are drawn every ``--steps-per-outer`` steps, gradients are clipped at 10 as in training.

    python benchmark/diagnostics/second_term_replay.py \
        benchmark/zoo_logs/mujoco/Hopper-v5/<run>/checkpoints --algo msobirl --coefs 0,1e-4,3e-4,1e-3,1e-2

Prints the starting fit, then the gradient norms of both terms and the fit after the replay per
coefficient (train accuracy over all labels, mean Bradley-Terry loss).
"""

import argparse
import copy

import numpy as np
import torch as th

from agents.checkpoint import find_checkpoint
from agents.msobirl import MSoBiRL
from agents.sobirl import SoBiRL
from birl.feedback import bradley_terry_nll, preference_accuracy, segment_returns


def fit(model) -> str:
    s1, s2, y = model.preferences[np.arange(len(model.preferences))]
    with th.no_grad():
        r1, r2 = segment_returns(model.reward_model, s1), segment_returns(model.reward_model, s2)
        loss = float(bradley_terry_nll(r1, r2, th.as_tensor(y)).mean())
    return f"accuracy {preference_accuracy(r1, r2, y):.3f}, loss {loss:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", help="a run's checkpoints folder (its newest good checkpoint is used)")
    parser.add_argument("--algo", choices=("msobirl", "sobirl"), default="msobirl")
    parser.add_argument("--coefs", default="0,1e-4,3e-4,1e-3,1e-2")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--steps-per-outer", type=int, default=50)
    args = parser.parse_args()
    th.set_num_threads(1)
    checkpoint = find_checkpoint(args.checkpoints)
    if checkpoint is None:
        raise SystemExit(f"checkpoints: no checkpoint in {args.checkpoints!r}")
    model = checkpoint.load_agent(algo=MSoBiRL if args.algo == "msobirl" else SoBiRL, device="cpu")
    n = len(model.preferences)
    if n < 64:
        raise SystemExit(f"checkpoints: the agent holds {n} labels, at least 64 are needed")
    start_model, start_opt = copy.deepcopy(model.reward_model.state_dict()), copy.deepcopy(model.reward_optimizer.state_dict())
    on_policy = model.preferences[np.arange(n - 64, n)]
    print(f"{checkpoint.path}: {n} labels, tau {model._tau():.3f}; at the checkpoint: {fit(model)}")
    for coef in (float(c) for c in args.coefs.split(",")):
        model.reward_model.load_state_dict(start_model)
        model.reward_optimizer.load_state_dict(start_opt)
        model.hypergrad_coef, model._outer_rng = coef, np.random.default_rng(0)
        score_dirs = model._score_directions(list(on_policy[:2])) if model.estimator == "successor" else None
        for step in range(args.steps):
            if step % args.steps_per_outer == 0:
                model._branch_cache = None  # M-SoBiRL: fresh branched rollouts, as a new outer step draws
            surrogate, direct = model._reward_objective(on_policy, score_dirs)()
            if step == 0:
                norms = model._gradient_norms(direct, surrogate - direct)
            model.reward_optimizer.zero_grad()
            surrogate.backward()
            th.nn.utils.clip_grad_norm_(model.reward_model.parameters(), max_norm=10.0)
            model.reward_optimizer.step()
        print(f"hypergrad_coef {coef:g}: gradient norms direct {norms[0]:.1f}, second term {norms[1]:.1f}; "
              f"after {args.steps} reward steps: {fit(model)}", flush=True)


if __name__ == "__main__":
    main()
