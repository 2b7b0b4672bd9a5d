"""PLAS (self-organising grids): the sort against a brute-force neighbour-smoothness measure."""
import numpy as np
import pytest
import torch

from splat.compress.plas import grid_shape, neighbour_distance, plas_sort, standardise
from splat.io.compressed_ply import morton_order


def brute_neighbour_distance(features: np.ndarray, order, H: int, W: int) -> float:
    """The smoothness measure written out with loops: every right and down neighbour pair of
    occupied cells, their Euclidean distance, averaged."""
    N = len(order)
    total, count = 0.0, 0
    for y in range(H):
        for x in range(W):
            k = y * W + x
            if k >= N:
                continue
            for ny, nx in ((y, x + 1), (y + 1, x)):
                kk = ny * W + nx
                if ny < H and nx < W and kk < N:
                    total += float(np.linalg.norm(features[order[k]] - features[order[kk]]))
                    count += 1
    return total / count


def test_neighbour_distance_matches_the_loops():
    g = torch.Generator().manual_seed(1)
    for n, shape in ((12, (3, 4)), (10, (3, 4)), (7, (2, 4))):
        f = torch.rand(n, 5, generator=g)
        order = torch.randperm(n, generator=g)
        assert neighbour_distance(f, order, shape) == pytest.approx(
            brute_neighbour_distance(f.numpy().astype(np.float64), order.tolist(), *shape), rel=1e-12)


@pytest.mark.parametrize("side", [8, 16])
def test_plas_recovers_a_shuffled_lattice(side):
    """Elements whose features are the cells of a side x side lattice, shuffled: the smoothest
    arrangement puts every pair of neighbours 1 apart (the measure's optimum, 1.0); PLAS comes
    within 1.5x of it (a random layout is ~side/2 away), measured by the loops above."""
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    f = torch.stack([yy.flatten(), xx.flatten()], 1).float()
    f = f[torch.randperm(side * side, generator=torch.Generator().manual_seed(side))]
    for seed in range(3):
        order = plas_sort(f, (side, side), seed=seed)
        got = brute_neighbour_distance(f.numpy().astype(np.float64), order.tolist(), side, side)
        assert 1.0 <= got <= 1.5, (seed, got)
    rand = brute_neighbour_distance(f.numpy().astype(np.float64), list(range(side * side)), side, side)
    assert rand > side / 4


@pytest.mark.parametrize("n", [1, 3, 4, 5, 37, 1000])
def test_plas_is_a_permutation_with_the_empty_cells_last(n):
    f = torch.rand(n, 4, generator=torch.Generator().manual_seed(n))
    shape = grid_shape(n)
    H, W = shape
    assert H * W >= n > H * W - W
    order = plas_sort(f, shape)
    assert order.dtype == torch.long and torch.equal(torch.sort(order).values, torch.arange(n))
    assert torch.equal(plas_sort(f, shape), order)  # deterministic for a seed


def test_plas_is_smoother_than_morton_and_random():
    """On points with colours that follow their position (as in a scene), the PLAS grid of all
    attributes is smoother than the Morton order of the positions, which beats a random layout."""
    g = torch.Generator().manual_seed(2)
    n = 3000
    means = torch.rand(n, 3, generator=g)
    colours = torch.stack([means[:, 0], means[:, 1] * means[:, 2], 1 - means[:, 2]], 1) \
        + 0.05 * torch.randn(n, 3, generator=g)
    f = standardise(torch.cat([means, colours], 1))
    shape = grid_shape(n)
    plas = neighbour_distance(f, plas_sort(f, shape), shape)
    morton = neighbour_distance(f, torch.from_numpy(morton_order(means)), shape)
    rand = neighbour_distance(f, torch.randperm(n, generator=g), shape)
    assert plas < 0.7 * morton < 0.7 * rand, (plas, morton, rand)


def test_plas_from_a_given_start_only_improves_it():
    g = torch.Generator().manual_seed(3)
    f = torch.rand(500, 3, generator=g)
    shape = grid_shape(500)
    start = torch.from_numpy(morton_order(f))
    order = plas_sort(f, shape, init=start)
    assert neighbour_distance(f, order, shape) < neighbour_distance(f, start, shape)


def test_plas_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        plas_sort(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="cannot hold"):
        plas_sort(torch.zeros(10, 3), (2, 4))
    with pytest.raises(ValueError, match="permutation"):
        plas_sort(torch.zeros(10, 3), (3, 4), init=torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one"):
        grid_shape(0)


def test_grid_shape():
    assert grid_shape(16) == (4, 4)
    assert grid_shape(17) == (4, 5)
    assert grid_shape(100, multiple=4) == (9, 12)
