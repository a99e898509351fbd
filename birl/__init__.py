"""birl: the mathematics of soft bilevel reinforcement learning (numpy + torch only).

Submodules: :mod:`birl.tabular` (soft MDPs), :mod:`birl.rewards` (parameterised reward tables),
:mod:`birl.losses` (outer losses), :mod:`birl.hypergrad` (hypergradient estimators) and
:mod:`birl.solvers` (tabular outer loops and baselines).
"""

__version__ = "0.1.0"
