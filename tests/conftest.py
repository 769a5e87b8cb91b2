import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Small tensors: intra-op threads only add overhead (and stall badly on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
