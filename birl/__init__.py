"""birl: the mathematics of soft bilevel reinforcement learning (numpy + torch only).

Submodules: :mod:`birl.tabular` (soft MDPs), :mod:`birl.rewards` (parameterised reward tables),
:mod:`birl.losses` (outer losses), :mod:`birl.hypergrad` (hypergradient estimators),
:mod:`birl.solvers` (tabular outer loops and baselines), :mod:`birl.reward_models` (deep reward
models), :mod:`birl.feedback` (segments, teacher, datasets), :mod:`birl.dynamics` (dynamics
ensembles), :mod:`birl.model_env` (one rollout interface for true, tabular and learned models)
and :mod:`birl.world_model` (seed 001: a classifier trained as a horizon-1 soft policy).
"""

__version__ = "0.1.0"
