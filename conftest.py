"""pytest set-up shared by the unit tests and the notebooks that nbval executes.

Running the suite means the ``ci`` scale unless ``DISTILL_LAB_SCALE`` says otherwise. The toy
networks are small (MLPs of a few hundred units), and on a 2-core machine they train several times
faster on one thread than on two, so the suite runs single-threaded unless ``OMP_NUM_THREADS`` is
set. The notebook kernels that nbval starts inherit both variables.
"""

import atexit
import os
import shutil

import pytest

os.environ.setdefault("DISTILL_LAB_SCALE", "ci")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# in the suite an exercise left unanswered, or a prediction the run contradicts, fails its lab
# (distill_lab.exercises); a student running a lab by hand gets a printed notice instead
os.environ.setdefault("DISTILL_LAB_STRICT", "1")
_ROOT = os.path.dirname(os.path.abspath(__file__))
# the student versions (labs/student/) have blanks; CI executes the labs they are made from, whose
# solutions fill those blanks exactly (tests/test_exercises.py)
collect_ignore_glob = ["labs/student/*"]

# CIFAR-10 for the KD labs and tests: an offline copy beside the project (as on the CI machines)
# when no location is set; elsewhere the labs fall back to torchvision's download.
_shared = os.path.join(_ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz")
if "DISTILL_LAB_CIFAR" not in os.environ and os.path.exists(_shared):
    os.environ["DISTILL_LAB_CIFAR"] = os.path.normpath(_shared)

# Every notebook kernel nbval starts loads tests/guards/no_tensors_in_matplotlib.py (an IPython startup
# file in a private IPython folder): a lab that hands matplotlib a torch tensor, which would crash on a
# GPU, fails here on the CPU. The folder is temporary, so the kernels' history stays out of the repository.
from distill_lab.course import guard_ipython_dir  # noqa: E402  (after the variables above are set)

_ipython_dir = guard_ipython_dir()
if _ipython_dir is not None:  # (a mutation run's copy of the repository has no labs and may lack the guard)
    atexit.register(shutil.rmtree, _ipython_dir, ignore_errors=True)
    os.environ["IPYTHONDIR"] = _ipython_dir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A notebook cell that passed nbval still fails when its output shows a warning a student cannot act
    on (one raised outside the package: torch, matplotlib, tqdm; ``distill_lab.course.stray_warnings``)."""
    outcome = yield
    report = outcome.get_result()
    outputs = getattr(item, "test_outputs", None)
    if call.when != "call" or not report.passed or not outputs:
        return
    from distill_lab.course import stray_warnings

    stray = stray_warnings(outputs)
    if stray:
        report.outcome = "failed"
        report.longrepr = ("this cell's output shows a warning a student cannot act on; avoid it where it "
                           "arises, or silence that one warning with a filter that names it:\n  "
                           + "\n  ".join(stray))


# nbval waits a fixed 5 s for a cell's outputs after the kernel says the cell is done (IPyNbCell.output_timeout);
# on a loaded 2-core machine the outputs of a cell that drew a figure arrived later than that once, and the cell
# failed with "Timeout of 5 seconds exceeded waiting for output" although it had run. The cell's own time limit
# (--nbval-cell-timeout) is untouched: this is only how long to wait for what a finished cell printed.
NBVAL_OUTPUT_WAIT = 120


def pytest_collection_modifyitems(items):
    for item in items:
        if hasattr(item, "output_timeout"):
            item.output_timeout = NBVAL_OUTPUT_WAIT
