"""Pictures the labs, the tour and the bench share: sample grids, quality-versus-NFE curves, drift curves.

Everything handed to matplotlib goes through :func:`to_numpy` first: matplotlib converts a torch tensor
with ``numpy()``, which fails for a tensor on a GPU, so a figure drawn straight from a CUDA tensor crashes
on Colab's GPUs although it works on a laptop. The test suite runs every lab with matplotlib refusing
torch tensors (``tests/guards``), so such a figure fails on the CPU too.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch


def to_numpy(x):
    """A tensor (on any device, any float dtype, with or without gradient) as a numpy array; lists and
    tuples element by element; anything else unchanged. What every figure is drawn from."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # numpy has no bfloat16
        return x.cpu().numpy()
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    return x


def scatter_panels(panels: dict[str, torch.Tensor], lim: float = 2.6, size: float = 2.6, n: int = 3000,
                   cols: int | None = None, s: float = 2.0, color: str = "C0"):
    """One scatter plot per ``{title: Tensor[n, 2]}``, on a shared square window. Returns the figure."""
    k = len(panels)
    cols = cols or k
    rows = (k + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (title, x) in zip(axes.flat, panels.items()):
        x = to_numpy(x[:n])
        ax.scatter(x[:, 0], x[:, 1], s=s, color=color, alpha=0.5, linewidths=0)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def nfe_curve(curves: dict[str, dict[int, float]], floor: float | None = None, ax=None,
              ylabel: str = "sliced W2 to held-out data"):
    """Plot ``{label: {nfe: value}}`` on log-log axes with the noise floor as a dashed line."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    for label, c in curves.items():
        ks = sorted(c)
        ax.plot(ks, [float(c[k]) for k in ks], "o-", label=label, ms=4)
    if floor is not None:
        ax.axhline(float(floor), color="k", ls="--", lw=1, label="noise floor")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("function evaluations (NFE)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return ax



def image_rows(rows: dict[str, torch.Tensor], ncol: int, title: str | None = None, scale: float = 0.75):
    """One row of images per ``{label: Tensor[n, C, H, W]}`` (values in ``[-1, 1]``, the image track's
    range), the first ``ncol`` of each, labels on the left. Returns the figure."""
    from torchvision.utils import make_grid

    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * ncol, scale * 1.12 * len(rows)), squeeze=False)
    for ax, (label, x) in zip(axes[:, 0], rows.items()):
        img = (x[:ncol].detach().float().cpu().clamp(-1, 1) + 1) / 2
        grid = make_grid(img, nrow=ncol, padding=1, pad_value=1.0)
        ax.imshow(to_numpy(grid.permute(1, 2, 0)), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def drift_plot(curves: dict[str, torch.Tensor], horizon: int | None = None, ax=None,
               ylabel: str = "frame error (vs clean rendering)"):
    """Per-frame error curves ``{label: Tensor[F]}`` against the frame index, with the training
    horizon (``horizon`` frames) marked: how quality decays along a streamed rollout."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.2))
    for label, c in curves.items():
        c = to_numpy(c)
        ax.plot(range(len(c)), c, label=label, lw=1.5)
    if horizon is not None:
        ax.axvline(horizon - 0.5, color="k", ls=":", lw=1, label="training horizon")
    ax.set_xlabel("frame index")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return ax
