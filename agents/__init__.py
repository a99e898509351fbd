"""agents: Stable-Baselines3 side of soft bilevel RL (DESIGN.md sections 3 and 4).

Importing this package stays cheap: the SB3 algorithms are loaded on first attribute access
(``from agents import SoBiRL`` imports :mod:`agents.sobirl` and Stable-Baselines3 then), so
``python -m agents.benchmark tabular`` needs numpy, torch and matplotlib only.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "SoBiRL": "agents.sobirl",
    "DiscreteSoBiRL": "agents.sobirl",
    "DRLHF": "agents.sobirl",
    "DiscreteDRLHF": "agents.sobirl",
    "DiscreteSAC": "agents.discrete_sac",
    "MSoBiRL": "agents.msobirl",
    "DiscreteMSoBiRL": "agents.msobirl",
    "OfflineMLIRL": "agents.offline",
    "BehaviourCloning": "agents.bc",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
