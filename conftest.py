"""pytest set-up shared by the unit tests and the notebooks that nbval executes.

Running the suite means the ``ci`` scale unless ``DISTILL_LAB_SCALE`` says otherwise; the notebook
kernels that nbval starts inherit these variables.
"""

import os

os.environ.setdefault("DISTILL_LAB_SCALE", "ci")
