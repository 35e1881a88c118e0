"""Loaded at the start of every notebook kernel the test suite runs (an IPython startup file, installed
by the root ``conftest.py``): matplotlib refuses torch tensors.

matplotlib draws a tensor by calling its ``numpy()``, which fails for a tensor on a GPU: a lab that plots
a tensor straight away works on a laptop and crashes on Colab's GPUs. On the CPU nothing fails, so CI
would never see it. With this guard a lab fails on the CPU too, at the call that would fail on a GPU,
unless it draws from ``distill_lab.core.plots.to_numpy`` (or the plotting helpers, which use it).
"""

import functools

import matplotlib.axes
import torch

METHODS = ("plot", "scatter", "imshow", "hist", "bar", "barh", "errorbar", "fill_between", "fill_betweenx",
           "quiver", "contour", "contourf", "pcolormesh", "semilogy", "semilogx", "loglog", "hexbin", "step",
           "axhline", "axvline", "hlines", "vlines", "text", "annotate", "boxplot", "violinplot", "stairs")


def _has_tensor(v, depth=0):
    if isinstance(v, torch.Tensor):
        return True
    if depth < 2 and isinstance(v, (list, tuple)):
        return any(_has_tensor(u, depth + 1) for u in v)
    return False


def _guarded(name, fn):
    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if any(_has_tensor(a) for a in args) or any(_has_tensor(v) for v in kwargs.values()):
            raise TypeError(f"a torch tensor reached matplotlib's Axes.{name}: draw from "
                            "distill_lab.core.plots.to_numpy(...) instead (matplotlib calls numpy() on a "
                            "tensor, which fails for one on a GPU)")
        return fn(self, *args, **kwargs)
    return wrapper


for _name in METHODS:
    if hasattr(matplotlib.axes.Axes, _name):
        setattr(matplotlib.axes.Axes, _name, _guarded(_name, getattr(matplotlib.axes.Axes, _name)))
