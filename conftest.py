"""pytest set-up shared by the unit tests and the notebooks that nbval executes.

Running the suite means the ``ci`` scale unless ``DISTILL_LAB_SCALE`` says otherwise. The toy
networks are small (MLPs of a few hundred units), and on a 2-core machine they train several times
faster on one thread than on two, so the suite runs single-threaded unless ``OMP_NUM_THREADS`` is
set. The notebook kernels that nbval starts inherit both variables.
"""

import os

os.environ.setdefault("DISTILL_LAB_SCALE", "ci")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# CIFAR-10 for the KD labs and tests: an offline copy beside the project (as on the CI machines)
# when no location is set; elsewhere the labs fall back to torchvision's download.
_shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "cifar10-jpeg.tar.gz")
if "DISTILL_LAB_CIFAR" not in os.environ and os.path.exists(_shared):
    os.environ["DISTILL_LAB_CIFAR"] = os.path.normpath(_shared)
