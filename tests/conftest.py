import functools
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


def _prepare(name, monkeypatch=None):
    """Build and load a backend; skip where CUDA is absent (a failing build fails loudly).

    "cuda-emulated" is the CUDA backend's own source compiled for the host
    (splat.backends.cuda.build_host_emulation): its kernels run on the CPU on CPU
    tensors, so every CI run executes them against the reference."""
    if name == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("backend 'cuda': no CUDA device on this machine")
        from splat.backends import cuda

        cuda.load()
    elif name == "cpu":
        from splat.backends import cpu

        cpu.load()
    elif name == "cuda-emulated":
        import splat.render
        from splat.backends import cuda

        lib = _emulated_cuda_lib()
        real_get = splat.render.get_backend
        monkeypatch.setattr(cuda, "_lib", lib)
        monkeypatch.setattr(splat.render, "get_backend",
                            lambda b, device, dtype=torch.float32: cuda if b == "cuda-emulated" else
                            real_get(b, device, dtype))
    return name


@functools.cache
def _emulated_cuda_lib():
    from splat.backends import cuda
    from splat.backends._build import load_library

    return cuda.bind(load_library(cuda.build_host_emulation()))


@pytest.fixture(params=["cpu", "cuda", "cuda-emulated"])
def native(request, monkeypatch):
    """Each native backend in turn (compared against the torch reference)."""
    return _prepare(request.param, monkeypatch)


@pytest.fixture(params=["torch", "cpu", "cuda", "cuda-emulated"])
def any_backend(request, monkeypatch):
    """Every backend in turn."""
    return _prepare(request.param, monkeypatch)
