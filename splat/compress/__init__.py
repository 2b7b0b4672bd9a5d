"""Making models smaller: self-organising grids (PLAS), quantisation and elastic budgets.

Modules (import the one you need; this package imports nothing itself):

* ``splat.compress.budget``: elastic budgets in the manner of FlexGS (keep a fraction of the
  Gaussians, chosen by measured importance, and adjust the survivors):
  `gaussian_importance`, `apply_budget`, `sphere_cameras`.
* ``splat.compress.plas``: self-organising 2D grids of Gaussians (PLAS).
* ``splat.compress.quantize``: quantisation of the Gaussians' attributes.
"""
