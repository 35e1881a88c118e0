"""The figures' one door to matplotlib (``core.plots.to_numpy``) and the guard that keeps the labs to it."""

import runpy
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from distill_lab.core.plots import drift_plot, image_rows, nfe_curve, scatter_panels, to_numpy  # noqa: E402

GUARD = Path(__file__).parent / "guards" / "no_tensors_in_matplotlib.py"


def test_to_numpy_takes_any_tensor_and_leaves_the_rest():
    x = torch.randn(3, 2, requires_grad=True)
    np.testing.assert_array_equal(to_numpy(x), x.detach().numpy())
    half = to_numpy(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert half.dtype == np.float32 and half.tolist() == [1.5, -2.0]
    assert to_numpy(torch.tensor([1, 2])).dtype == np.int64
    a, b = to_numpy((torch.tensor(3.0), 4))
    assert isinstance(a, np.ndarray) and float(a) == 3.0 and b == 4
    assert to_numpy("label") == "label"


def test_the_guard_refuses_tensors_and_the_helpers_pass_it(monkeypatch):
    originals = {k: v for k, v in vars(matplotlib.axes.Axes).items() if callable(v)}
    for k, v in originals.items():
        monkeypatch.setattr(matplotlib.axes.Axes, k, v)  # monkeypatch restores each after the test
    runpy.run_path(str(GUARD))
    fig, ax = plt.subplots()
    with pytest.raises(TypeError, match="torch tensor reached matplotlib's Axes.scatter"):
        ax.scatter(torch.randn(5), torch.randn(5))
    with pytest.raises(TypeError, match="Axes.plot"):
        ax.plot([torch.tensor(1.0), torch.tensor(2.0)])  # a list of tensors fails on a GPU too
    with pytest.raises(TypeError, match="Axes.imshow"):
        ax.imshow(X=torch.rand(4, 4))
    ax.scatter(np.zeros(5), np.ones(5))
    ax.plot([1.0, 2.0])
    plt.close(fig)
    # the package's helpers draw tensors through to_numpy
    plt.close(scatter_panels({"a": torch.randn(50, 2)}))
    plt.close(image_rows({"a": torch.rand(3, 3, 4, 4) * 2 - 1}, ncol=3))
    plt.close(drift_plot({"a": torch.rand(6)}, horizon=4).figure)
    plt.close(nfe_curve({"a": {1: torch.tensor(0.5), 2: 0.25}}, floor=torch.tensor(0.1)).figure)
