"""Fixtures shared by every test file. pyproject.toml puts the repository root on sys.path."""
import pytest


@pytest.fixture(autouse=True)
def _deterministic_seed():
    """Every test starts from the same generator states, whatever ran before it (the training transforms
    draw from Python's and numpy's generators, the models from torch's)."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
