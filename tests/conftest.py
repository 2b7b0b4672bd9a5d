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


def _prepare(name):
    """Build and load a native backend; skip where CUDA is absent (a failing build fails loudly)."""
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("backend 'cuda': no CUDA device on this machine")
        from splat.backends import cuda

        cuda.load()
    elif name == "cpu":
        from splat.backends import cpu

        cpu.load()
    return name


@pytest.fixture(params=["cpu", "cuda"])
def native(request):
    """Each native backend in turn (compared against the torch reference)."""
    return _prepare(request.param)


@pytest.fixture(params=["torch", "cpu", "cuda"])
def any_backend(request):
    """Every backend in turn."""
    return _prepare(request.param)
