"""Training beyond one process: Grendel-style sharded training on torch.distributed
(`splat.distributed.grendel`, `splat.distributed.world`, `splat.distributed.partition`)
and block-partitioned training of large scenes (`splat.distributed.blocks`).

The package's ``__init__`` imports nothing, so the training loop can use its modules
and `splat.train.blocks` can build on both without an import cycle.
"""
