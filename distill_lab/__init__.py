"""distill-lab: every distillation method once, shape-generic and tested, run in notebooks.

Start with ``python -m distill_lab tour`` or the labs in ``labs/``.
"""

import warnings

__version__ = "0.1.0"

# torch's forward-mode AD (torch.func.jvp, which sCM, TBCM and the flow maps use) scripts one of its own
# helpers and warns that torch.jit.script is deprecated: a warning about torch's internals that a student
# cannot act on. Only that warning, from that module, is silenced.
warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning,
                        module=r"torch\.jit\._script")
