"""rl-baselines3-zoo style hyperparameter files (``<algo>.yml``), shipped as package data so that
``python -m agents.train`` finds them in an installed (non-editable) copy too."""
