"""distill-lab: every distillation method once, shape-generic and tested, run in notebooks.

Start with ``python -m distill_lab tour`` or the labs in ``labs/``.
"""

__version__ = "0.1.0"
