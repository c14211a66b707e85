import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one intra-op thread avoids spin contention, which made the tiny model's
    matmuls a thousand times slower here. Restored afterwards for other test folders."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from .runtime_helpers import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model"))
