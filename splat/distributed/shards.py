"""Gaussians sharded over processes: rank r holds rows [start_r, end_r) of the model's
per-Gaussian parameters, with their optimizer moments and density-control statistics.

The *global order* is the shards concatenated in rank order. A checkpoint holds the
whole model in that order (gathered on rank 0: the same layout as a one-process run's),
so a run resumes on any number of processes by slicing it again (`shard_bounds`,
`slice_rows`). Re-balancing moves rows between neighbours so that every shard holds the
same count again, keeping the global order (`rebalance_plan`).

Per-Gaussian entries are recognised as tensors whose first dimension is the shard's row
count (as density control's `splat.strategies.ops` does for optimizer state).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["shard_bounds", "slice_rows", "concat_rows", "pack_rows", "unpack_rows", "rebalance_plan", "row_tensors",
           "state_rows"]


def shard_bounds(n: int, size: int) -> List[Tuple[int, int]]:
    """Rows [start, end) of each of `size` shards of `n` rows: equal counts, the first ones one more."""
    return [((n * k) // size, (n * (k + 1)) // size) for k in range(size)]


def slice_rows(obj: Any, n: int, start: int, end: int) -> Any:
    """`obj` (tensors in nested dicts / lists) with every tensor of first dimension `n` cut to rows
    [start, end); everything else as it is."""
    if isinstance(obj, Tensor):
        return obj[start:end].clone() if obj.dim() > 0 and obj.shape[0] == n else obj
    if isinstance(obj, dict):
        return {k: slice_rows(v, n, start, end) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(slice_rows(v, n, start, end) for v in obj)
    return obj


def concat_rows(objs: Sequence[Any], ns: Sequence[int]) -> Any:
    """The shards' `objs` (one per rank, the same structure) as one: tensors whose first
    dimension is each shard's row count ``ns[r]`` are concatenated in rank order; everything else
    is rank 0's."""
    first = objs[0]
    if isinstance(first, Tensor):
        if first.dim() > 0 and all(isinstance(o, Tensor) and o.dim() > 0 and o.shape[0] == n
                                   for o, n in zip(objs, ns)) and first.shape[0] == ns[0]:
            return torch.cat([o.to(first.device) for o in objs])
        return first
    if isinstance(first, dict):
        return {k: concat_rows([o[k] for o in objs], ns) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(concat_rows([o[i] for o in objs], ns) for i in range(len(first)))
    return first


def row_tensors(obj: Any, n: int, prefix: str = "") -> List[Tuple[str, Tensor]]:
    """(path, tensor) of every tensor of first dimension `n` in `obj`, in a fixed order."""
    out: List[Tuple[str, Tensor]] = []
    if isinstance(obj, Tensor):
        if obj.dim() > 0 and obj.shape[0] == n:
            out.append((prefix, obj))
    elif isinstance(obj, dict):
        for k in obj:
            out += row_tensors(obj[k], n, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += row_tensors(v, n, f"{prefix}/{i}")
    return out


def pack_rows(tensors: Sequence[Tensor], dtype=None) -> Tuple[Tensor, List[Tuple[tuple, torch.dtype, int]]]:
    """Tensors [n, ...] as one [n, D] tensor of `dtype` (default: the first one's; integer and
    boolean ones go through float64 when it differs) and the layout that `unpack_rows` reverses."""
    n = tensors[0].shape[0]
    dtype = dtype or tensors[0].dtype
    cols, layout = [], []
    for t in tensors:
        flat = t.detach().reshape(n, math.prod(t.shape[1:]))
        layout.append((tuple(t.shape[1:]), t.dtype, flat.shape[1]))
        cols.append(flat.to(dtype))
    return torch.cat(cols, 1) if cols else torch.empty(n, 0, dtype=dtype), layout


def unpack_rows(packed: Tensor, layout) -> List[Tensor]:
    """The tensors `pack_rows` packed, from rows `packed` [m, D]."""
    out, off = [], 0
    for shape, dtype, d in layout:
        out.append(packed[:, off:off + d].to(dtype).reshape((packed.shape[0],) + shape).contiguous())
        off += d
    return out


def rebalance_plan(sizes: Sequence[int], rank: int) -> Tuple[List[int], List[int]]:
    """How rank `rank` re-balances shards of `sizes` to equal counts in the same global order:
    (send_counts [R]: how many of its rows, in order, go to each rank; recv_counts [R]: how
    many rows it gets from each)."""
    R = len(sizes)
    starts = [sum(sizes[:k]) for k in range(R)] + [sum(sizes)]
    target = shard_bounds(sum(sizes), R)

    def overlap(a0, a1, b0, b1):
        return max(0, min(a1, b1) - max(a0, b0))

    send = [overlap(starts[rank], starts[rank + 1], *target[d]) for d in range(R)]
    recv = [overlap(starts[s], starts[s + 1], *target[rank]) for s in range(R)]
    return send, recv


def state_rows(params: Dict[str, Tensor], optimizers, state: Dict[str, Any], names: Sequence[str],
               n: int) -> List[Tuple[str, Tensor]]:
    """Every per-Gaussian tensor of a shard of `n` rows, in a fixed order: the parameters `names`,
    their optimizer state (moments), the strategy's `state` entries."""
    out = [(f"param/{k}", params[k].data) for k in names]
    for k in names:
        st = optimizers[k].state.get(params[k], {})
        out += [(f"opt/{k}/{key}", v) for key, v in st.items() if isinstance(v, Tensor) and v.dim() > 0
                and v.shape[0] == n]
    out += row_tensors({k: v for k, v in state.items()}, n, "state")
    return out
