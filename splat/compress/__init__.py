"""Making models smaller: self-organising grids (PLAS), quantisation and elastic budgets.

Modules (import the one you need; this package imports nothing itself):

* ``splat.compress.budget``: elastic budgets in the manner of FlexGS (keep a fraction of the
  Gaussians, chosen by measured importance, and adjust the survivors):
  `gaussian_importance`, `apply_budget`, `sphere_cameras`.
* ``splat.compress.plas``: self-organising 2D grids of Gaussians (PLAS): `plas_sort`, `grid_order`
  (the .sog layout splat-export writes), `neighbour_distance`.
* ``splat.compress.grid_loss``: ``splat-train --compress sog``: the grid's smoothness loss and re-sorts.
* ``splat.compress.quantize``: model-level quantisers any writer can be given: `reduce_sh_degree`,
  `quantize_sh` (the codebooks themselves are `splat.io.codebooks`, below the file formats).
"""
