import numpy as np
import pytest

from birl.tabular import garnet


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture
def small_garnet():
    return garnet(6, 3, 4, gamma=0.8, tau=0.7, seed=1, branching=2)


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """Small networks run fastest, and reproducibly, on one CPU thread."""
    import torch

    torch.set_num_threads(1)
