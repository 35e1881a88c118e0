"""CIFAR-10 networks: the teacher/student pairs of the distillation benchmarks, and two small ones.

Every model maps normalised images ``x [B, 3, 32, 32]`` to ``forward(x) -> logits [B, num_classes]``
and has ``features(x) -> [B, D]``, the penultimate layer (after global pooling, before the
classifier ``fc``), for linear probes and feature distillation; ``fc(features(x)) == forward(x)``.

* :class:`CifarResNet`: the CIFAR ResNets of He et al. (2016, sec. 4.2) as used in the distillation
  benchmark of Tian et al. (2020, "Contrastive Representation Distillation", CRD): three stages of
  basic blocks, ``(depth - 2) / 6`` blocks a stage, a 1x1 convolution on the shortcut where the shape
  changes. ``resnet20``, ``resnet56`` (widths 16-16-32-64), and the 4x wider ``resnet8x4`` and
  ``resnet32x4`` (widths 32-64-128-256).
* :class:`WideResNet`: Zagoruyko and Komodakis (2016), pre-activation blocks, ``(depth - 4) / 6``
  blocks a stage, widths 16-16k-32k-64k: ``wrn_16_2``, ``wrn_40_2``.
* :class:`TinyCNN`: three blocks conv-BN-ReLU-maxpool (16, 32, 64 channels), global average pool:
  the CPU student of ``MEASURED.md``.
* :class:`FastVGG`: a fast teacher in the style of the quickest public CIFAR-10 trainers: a
  3x3 stem, three stages of two convolutions (widths 64, 256, 256) with a max pool after the first
  convolution of each, BatchNorm and GELU, global max pool.

Parameter counts (measured with ``n_params``) at 10 classes, and at 100 (CIFAR-100, where the
CRD paper's table quotes 0.28M, 0.86M, 0.70M, 1.23M, 2.26M and 7.43M for the ResNets and WRNs):

=============  ===========  ===========  =====
name           10 classes   100 classes  D
=============  ===========  ===========  =====
tiny_cnn            24,346       30,196     64
resnet20           272,474      278,324     64
resnet56           855,770      861,620     64
wrn_16_2           691,674      703,284    128
resnet8x4        1,210,410    1,233,540    256
fast_vgg         1,978,016    2,001,056    256
wrn_40_2         2,243,546    2,255,156    128
resnet32x4       7,410,730    7,433,860    256
=============  ===========  ===========  =====

    >>> from distill_lab.cifar.classifiers import get_model, n_params
    >>> n_params(get_model("resnet8x4"))
    1210410
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..nets.utils import n_params  # noqa: F401  (re-exported: the count quoted in every docstring)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _init(module: nn.Module) -> None:
    """He-normal convolutions, BatchNorm at identity: the usual CIFAR ResNet initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarNet(nn.Module):
    """Base: subclasses define ``features(x) -> [B, D]`` and a classifier ``fc``; ``forward`` is
    ``fc(features(x))``. ``feature_dim`` is ``D``."""

    feature_dim: int
    fc: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ------------------------------------------------------------------ ResNet (He et al. 2016, CIFAR)
class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut is a strided 1x1
    convolution with BatchNorm when the shape changes, else the identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class CifarResNet(CifarNet):
    """Stem conv3x3 to ``widths[0]``, stages of ``(depth - 2) // 6`` basic blocks at ``widths[1:]``
    (strides 1, 2, 2: 32x32, 16x16, 8x8), global average pool (``D = widths[3]``), linear."""

    def __init__(self, depth: int, widths=(16, 16, 32, 64), num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n + 2 (8, 20, 32, 56, 110...), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(conv3x3(3, widths[0]), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for w, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(BasicBlock(c, w, stride if i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def features(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


# ------------------------------------------------------------------ Wide ResNet (Zagoruyko 2016)
class PreActBlock(nn.Module):
    """``conv(relu(bn(conv(relu(bn(x)))))) + shortcut``; where the shape changes the shortcut is a
    1x1 convolution of the pre-activated input ``relu(bn(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), conv3x3(c_in, c_out, stride)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), conv3x3(c_out, c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x):
        a = F.relu(self.bn1(x))
        h = self.conv2(F.relu(self.bn2(self.conv1(a))))
        return h + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(CifarNet):
    """WRN-``depth``-``k``: stem conv3x3 to 16, stages of ``(depth - 4) // 6`` pre-activation blocks at
    widths ``16k, 32k, 64k`` (strides 1, 2, 2), BN-ReLU, global average pool (``D = 64k``), linear."""

    def __init__(self, depth: int, k: int, num_classes: int = 10):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet: depth must be 6n + 4 (10, 16, 22, 28, 40...), got {depth}")
        n = (depth - 4) // 6
        self.stem = conv3x3(3, 16)
        blocks, c = [], 16
        for w, stride in zip((16 * k, 32 * k, 64 * k), (1, 2, 2)):
            for i in range(n):
                blocks.append(PreActBlock(c, w, stride if i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def features(self, x):
        return F.relu(self.bn(self.blocks(self.stem(x)))).mean((2, 3))


# ------------------------------------------------------------------ small and fast nets
class TinyCNN(CifarNet):
    """Three blocks conv3x3-BN-ReLU-maxpool2 at ``widths`` (32 -> 16 -> 8 -> 4 pixels), global average
    pool (``D = widths[-1]``), linear. 24,346 parameters at the default widths (16, 32, 64)."""

    def __init__(self, widths=(16, 32, 64), num_classes: int = 10):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers += [conv3x3(c, w), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def features(self, x):
        return self.body(x).mean((2, 3))


class FastVGG(CifarNet):
    """A VGG-like teacher that trains in seconds on a GPU, in the spirit of the fastest public
    CIFAR-10 trainers (Keller Jordan's airbench, David Page's ResNet-9 runs).

    Stem conv3x3 3 -> ``stem``, BN, GELU; then per width ``w`` in ``widths``: conv3x3 -> maxpool2 ->
    BN -> GELU -> conv3x3 -> BN -> GELU (32 -> 16 -> 8 -> 4 pixels); global max pool
    (``D = widths[-1]``); linear without bias. 1,978,016 parameters at the defaults.
    """

    def __init__(self, widths=(64, 256, 256), stem: int = 32, num_classes: int = 10):
        super().__init__()
        layers, c = [conv3x3(3, stem), nn.BatchNorm2d(stem), nn.GELU()], stem
        for w in widths:
            layers += [conv3x3(c, w), nn.MaxPool2d(2), nn.BatchNorm2d(w), nn.GELU(),
                       conv3x3(w, w), nn.BatchNorm2d(w), nn.GELU()]
            c = w
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.fc = nn.Linear(c, num_classes, bias=False)
        _init(self)

    def features(self, x):
        return self.body(x).amax((2, 3))


# ------------------------------------------------------------------ registry
MODELS = {
    "tiny_cnn": lambda num_classes: TinyCNN(num_classes=num_classes),
    "fast_vgg": lambda num_classes: FastVGG(num_classes=num_classes),
    "resnet20": lambda num_classes: CifarResNet(20, (16, 16, 32, 64), num_classes),
    "resnet56": lambda num_classes: CifarResNet(56, (16, 16, 32, 64), num_classes),
    "resnet8x4": lambda num_classes: CifarResNet(8, (32, 64, 128, 256), num_classes),
    "resnet32x4": lambda num_classes: CifarResNet(32, (32, 64, 128, 256), num_classes),
    "wrn_16_2": lambda num_classes: WideResNet(16, 2, num_classes),
    "wrn_40_2": lambda num_classes: WideResNet(40, 2, num_classes),
}


def get_model(name: str, num_classes: int = 10) -> CifarNet:
    """A freshly initialised model by name; ``ValueError`` listing the names when it is unknown."""
    key = name.strip().lower().replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"unknown CIFAR model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[key](num_classes)
