"""The toy-2D track: step distillation on 2D distributions, where every sample can be looked at.

* :mod:`.data` -- the distributions (checkerboard, moons, ...; any callable ``n -> Tensor[n, 2]``), and
  :func:`checkerboard_off_cells`, the mass a sampler puts outside the checkerboard's cells;
* :mod:`.experiment` -- :class:`Toy2D`: data, a flow-matching MLP teacher, and a fixed evaluation;
* :mod:`.bench` -- the ``toy2d`` bench track (importing this package registers it and every
  step-distillation recipe).
"""

from .bench import resolve_data, run_toy2d  # noqa: F401  (registers the track and its recipes)
from .data import DATASETS, checkerboard_off_cells, sample_data  # noqa: F401
from .experiment import Toy2D, train_flow_teacher  # noqa: F401
