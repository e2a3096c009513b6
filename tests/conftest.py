"""Shared test fixtures."""

import pytest


@pytest.fixture(scope="module")
def torch_one_thread():
    """The test machine is a shared 2-core box: one intra-op thread is fastest there."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
