"""Fixtures shared by the model tests."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Run small models on one thread: their ops are too small to gain from a second, which only
    adds synchronisation (and contends with other processes on a shared 2-core machine). The op's
    own tests do not use this, so its parallel CPU kernels stay exercised with several threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
