"""Fixtures shared by every test file. pyproject.toml puts the repository root on sys.path."""
import pytest


@pytest.fixture(autouse=True)
def _deterministic_seed():
    import torch

    torch.manual_seed(0)
    yield
