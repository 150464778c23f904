import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_review(tmp_path_factory):
    """One tiny build of the review world, shared by the tests that need models."""
    from ml.toyworld.build import build

    data_dir = tmp_path_factory.mktemp("data")
    return build("review", seed=0, data_dir=data_dir, size="tiny")
