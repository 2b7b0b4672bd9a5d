import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cpu_backend():
    """The native CPU backend, built once per session (tests needing it fail loudly if the build fails)."""
    from splat.backends import cpu

    cpu.load()
    return cpu
