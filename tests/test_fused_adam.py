"""The fused, sparse Adam step: ``torch.ops.splat.adam_rows`` (CPU library, and the CUDA
kernels under host emulation) and `splat.optim.adam.adam_step` / `AdamOptimizer`, against
torch.optim.Adam."""
from __future__ import annotations

import copy

import pytest
import torch

import splat.backends.fused_adam as fused_adam  # registers torch.ops.splat.adam_rows
from splat.models.base import GaussianParams
from splat.optim.adam import AdamConfig, AdamOptimizer, adam_step
from splat.train.threads import set_threads


@pytest.fixture(scope="module", autouse=True)
def _built(cpu_backend):
    return cpu_backend


def _grads(shape, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    # gradients over several decades, as Gaussians' are, some exactly zero
    out = []
    for _ in range(steps):
        x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 3)
        x[torch.rand(shape, generator=g) < 0.1] = 0
        out.append(x)
    return out


def _state(opt, p):
    st = opt.state[p]
    return p.detach().clone(), st["exp_avg"].clone(), st["exp_avg_sq"].clone(), float(st["step"])


def _run(p0, grads, step_fn, lr=0.01, eps=1e-15, betas=(0.9, 0.999), rows=None):
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.Adam([p], lr=lr, eps=eps, betas=betas)
    for g in grads:
        p.grad = g.clone()
        if step_fn is None:
            opt.step()
        else:
            step_fn(opt, p, rows)
    return _state(opt, p)


def _close(a, b, rel=2e-6):
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() <= rel * scale + 1e-30


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch-ops"])
@pytest.mark.parametrize("shape", [(1000, 3), (257, 1, 3), (5,)])
def test_dense_step_matches_torch_adam(fused, shape):
    p0 = torch.randn(shape)
    grads = _grads(shape, 6)
    want = _run(p0, grads, None)
    got = _run(p0, grads, lambda opt, p, rows: adam_step(opt, p, None, fused=fused))
    for a, b in zip(got[:3], want[:3]):
        _close(a, b)
    assert got[3] == want[3] == 6


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch-ops"])
def test_sparse_rows_keep_the_others_and_update_the_rest_as_dense(fused):
    """Rows not set keep parameter and both moments bit for bit; set rows get what the dense step
    gives them; the step count advances for the whole parameter."""
    N = 500
    p0 = torch.randn(N, 3)
    grads = _grads((N, 3), 4, seed=1)
    rows = torch.rand(N, generator=torch.Generator().manual_seed(2)) < 0.4
    # first a dense step everywhere (so the moments are non-zero), then sparse ones
    p = torch.nn.Parameter(p0.clone())
    opt = torch.optim.Adam([p], lr=0.01, eps=1e-15)
    p.grad = grads[0].clone()
    adam_step(opt, p, None, fused=fused)
    before = _state(opt, p)
    ref_p = torch.nn.Parameter(before[0].clone())
    ref = torch.optim.Adam([ref_p], lr=0.01, eps=1e-15)
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))  # (load_state_dict keeps the tensors it is given)
    for g in grads[1:]:
        p.grad = g.clone()
        adam_step(opt, p, rows, fused=fused)
        ref_p.grad = g.clone()
        adam_step(ref, ref_p, None, fused=fused)
    after, dense = _state(opt, p), _state(ref, ref_p)
    for a, b, d in zip(after[:3], before[:3], dense[:3]):
        assert torch.equal(a[~rows], b[~rows])
        if fused:
            assert torch.equal(a[rows], d[rows])  # the same per-element code
        else:
            _close(a[rows], d[rows])
    assert after[3] == 4


def test_no_rows_set_changes_nothing_but_the_count():
    p0 = torch.randn(64, 4)
    rows = torch.zeros(64, dtype=torch.bool)
    got = _run(p0, _grads((64, 4), 2), lambda opt, p, r: adam_step(opt, p, r), rows=rows)
    assert torch.equal(got[0], p0) and not got[1].any() and not got[2].any() and got[3] == 2


def test_fused_and_torch_ops_agree_with_rows():
    N = 300
    p0 = torch.randn(N, 7)
    grads = _grads((N, 7), 5, seed=3)
    rows = torch.arange(N) % 3 == 0
    a = _run(p0, grads, lambda opt, p, r: adam_step(opt, p, r, fused=True), rows=rows)
    b = _run(p0, grads, lambda opt, p, r: adam_step(opt, p, r, fused=False), rows=rows)
    for x, y in zip(a[:3], b[:3]):
        _close(x, y)


def test_thread_counts_give_identical_bits():
    start = torch.get_num_threads()
    p0 = torch.randn(200_000, 3)
    grads = _grads((200_000, 3), 3, seed=4)
    rows = torch.rand(200_000, generator=torch.Generator().manual_seed(5)) < 0.5
    try:
        out = []
        for n in (1, 2):
            set_threads(n)
            out.append(_run(p0, grads, lambda opt, p, r: adam_step(opt, p, r), rows=rows))
    finally:
        set_threads(start)
    for x, y in zip(out[0][:3], out[1][:3]):
        assert torch.equal(x, y)


def test_emulated_cuda_kernel_matches_the_cpu_library(monkeypatch):
    """The CUDA kernel's source, run by the host emulation on CPU tensors, against the CPU library."""
    from conftest import _prepare

    _prepare("cuda-emulated", monkeypatch)
    N, D = 1000, 3
    g = torch.Generator().manual_seed(6)
    p, grad = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    m, v = torch.randn(N, D, generator=g) * 0.1, torch.rand(N, D, generator=g) * 0.01
    rows = torch.rand(N, generator=g) < 0.5
    args = (0.9, 0.999, 1e-15, 0.01 / (1 - 0.9 ** 3), (1 - 0.999 ** 3) ** 0.5)
    for r in (None, rows):
        a = [t.clone() for t in (p, grad, m, v)]
        b = [t.clone() for t in (p, grad, m, v)]
        torch.ops.splat.adam_rows(a[0], a[1], a[2], a[3], r, *args)
        fused_adam._adam_rows_cuda(b[0], b[1], b[2], b[3], r, *args)
        for x, y in zip(a, b):
            _close(y, x, rel=1e-6)
        if r is not None:
            for x, y in zip(b, (p, grad, m, v)):
                assert torch.equal(x[~r], y[~r])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("sparse", [False, True])
def test_cuda_step_matches_torch_adam_on_the_gpu(sparse):
    """The CUDA kernel on a GPU: dense against torch.optim.Adam there; sparse rows as on the CPU."""
    from conftest import _prepare

    _prepare("cuda")
    N = 4096
    p0 = torch.randn(N, 3).cuda()
    grads = [g.cuda() for g in _grads((N, 3), 5, seed=8)]
    rows = (torch.arange(N) % 4 == 0).cuda() if sparse else None
    want = _run(p0, grads, None) if not sparse else _run(p0, grads, lambda o, p, r: adam_step(o, p, r, fused=False),
                                                         rows=rows)
    got = _run(p0, grads, lambda o, p, r: adam_step(o, p, r, fused=True), rows=rows)
    for a, b in zip(got[:3], want[:3]):
        _close(a.cpu(), b.cpu())
    if sparse:
        assert torch.equal(got[0][~rows].cpu(), p0[~rows].cpu())


def _bad_args():
    p = torch.zeros(10, 3)
    z = torch.zeros(10, 3)
    return [
        ((p, torch.zeros(10, 2), z, z, None), "grad has shape"),
        ((p.double(), z.double(), z.double(), z.double(), None), "float32"),
        ((p, z, z.t().contiguous().t(), z, None), "exp_avg must be contiguous"),
        ((p, z, z, z, torch.ones(9, dtype=torch.bool)), "vector of the parameter's 10 rows"),
        ((p, z, z, z, torch.ones(10)), "bool or uint8"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_args())))
def test_bad_inputs_are_refused_and_nothing_changes(case):
    args, match = _bad_args()[case]
    saved = [a.clone() for a in args if a is not None]
    with pytest.raises(ValueError, match=match):
        torch.ops.splat.adam_rows(*args, 0.9, 0.999, 1e-15, 0.01, 0.1)
    assert all(torch.equal(a, s) for a, s in zip([a for a in args if a is not None], saved))


def _optimizer(config, per_gaussian=True):
    g = torch.Generator().manual_seed(7)
    tensors = {"means": torch.randn(100, 3, generator=g), "net": torch.randn(100, 3, generator=g)}
    params = GaussianParams(tensors, ["means"]) if per_gaussian else torch.nn.ParameterDict(tensors)
    return params, AdamOptimizer(params, {"means": 0.01, "net": 0.01}, config)


@pytest.mark.parametrize("sparse", [True, False])
def test_optimizer_updates_only_the_visible_gaussians(sparse):
    """AdamOptimizer with sparse Adam: per-Gaussian parameters move on the rows set by
    set_visible only (the others' parameters and moments stay), shared parameters (here one
    that happens to have N rows) move everywhere; --adam.no-sparse moves every row on its
    momentum; the visibility is used once."""
    params, opt = _optimizer(AdamConfig(sparse=sparse))
    for p in params.values():
        p.grad = torch.ones_like(p)
    opt.update()  # a dense first step: momentum everywhere
    visible = torch.arange(100) < 30
    before = {k: p.detach().clone() for k, p in params.items()}
    for p in params.values():
        p.grad = torch.zeros_like(p)
        p.grad[:30] = 1.0  # as a render: no gradient where not seen
    opt.set_visible(visible)
    opt.update()
    assert opt.visible is None
    moved = {k: (p.detach() != before[k]).any(dim=1) for k, p in params.items()}
    assert moved["means"][:30].all() and moved["net"].all()
    assert moved["means"][30:].any() == (not sparse)


def test_a_plain_dict_is_all_per_gaussian():
    params, opt = _optimizer(AdamConfig(), per_gaussian=False)
    assert opt.per_gaussian == {"means", "net"}
