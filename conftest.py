"""pytest set-up shared by the unit tests and the notebooks that nbval executes.

Running the suite means the ``ci`` scale unless ``DISTILL_LAB_SCALE`` says otherwise. The toy
networks are small (MLPs of a few hundred units), and on a 2-core machine they train several times
faster on one thread than on two, so the suite runs single-threaded unless ``OMP_NUM_THREADS`` is
set. The notebook kernels that nbval starts inherit both variables.
"""

import os

os.environ.setdefault("DISTILL_LAB_SCALE", "ci")
os.environ.setdefault("OMP_NUM_THREADS", "1")
