"""Tiny models run fastest single-threaded on the shared 2-core machine (thread contention otherwise
dominates); restore the previous setting so other test folders are unaffected."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
