import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread, and the machine's two cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
