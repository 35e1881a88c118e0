"""Images to features for the image track's sample metrics: the penultimate features of this
project's own CIFAR-10 classifier, and the pixel conversions on the way.

**This is not FID.** FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to
the pool3 features of one particular Inception-v3 network, on 50,000 samples; its weights cannot be
fetched on the machines this lab runs on. Here the same distance (:mod:`distill_lab.metrics.frechet`)
is taken in the penultimate features of a CIFAR-10 classifier trained by
:mod:`distill_lab.cifar.kd_teacher` (128 features for the committed teacher, 256 for the ``gpu`` one;
Inception's are 2048). Numbers are comparable with each other, at the same feature network and the
same sample size, and with their noise floor; never with published FIDs. Call it "FD (classifier
features)" in tables.

* :class:`ClassifierFeatures`: images -> features ``[N, D]`` through ``model.features`` of a
  :mod:`distill_lab.cifar.classifiers` network. Any other callable ``images -> [N, D]`` can stand in
  wherever a ``feature_fn`` is taken: an Inception-v3 feature extractor from a standard FID package,
  where the network allows downloading its weights, turns
  :func:`~distill_lab.metrics.frechet.evaluate_samples` into FID and Inception precision/recall.

**Image conventions.** Generators in this lab work in ``[-1, 1]`` floats (``x = 2 * pixel / 255 - 1``);
the CIFAR-10 tensors of :func:`distill_lab.cifar.data.load_cifar10` are ``uint8`` in ``[0, 255]``; the
classifiers take :func:`distill_lab.cifar.data.normalize`'s per-channel standardisation. :func:`to_uint8`
and :func:`to_classifier_input` convert; :class:`ClassifierFeatures` accepts either image kind and by
default rounds float images to ``uint8`` first, so generated and real images take the same path (as
samples saved to PNG do for FID).

**The real reference.** Use images the feature classifier was not trained on (the test split) and a
*random* subset of them: the CIFAR-10 JPEG archive is decoded class by class, so ``test_x[:n]``
holds a few classes only, and the Fréchet distance to it is large for any good sampler.

    >>> feats = ClassifierFeatures.from_teacher()               # doctest: +SKIP
    >>> real = feats(data["test_x"])                            # doctest: +SKIP
    >>> fake = feats(sampler(noise))                            # doctest: +SKIP
    >>> evaluate_features(real, fake)                           # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .data import MEAN, STD, normalize
from .kd_teacher import DEFAULT_DIR, load_teacher


# ------------------------------------------------------------------ images -> classifier features
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in ``[-1, 1]`` -> ``uint8`` pixels: ``round((x + 1) * 127.5)``, clipped.

    The inverse of ``x = pixel / 127.5 - 1``, exactly, on the 256 pixel values.
    """
    if not x.is_floating_point():
        raise ValueError(f"to_uint8 takes float images in [-1, 1], got dtype {x.dtype}")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``uint8`` pixels -> floats in ``[-1, 1]``: ``pixel / 127.5 - 1`` (the generator's convention)."""
    if x.dtype != torch.uint8:
        raise ValueError(f"from_uint8 takes uint8 images, got dtype {x.dtype}")
    return x.to(dtype) / 127.5 - 1


def to_classifier_input(x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` -> what the CIFAR-10 classifiers take: ``(pixel / 255 - MEAN) / STD``.

    ``uint8`` images are pixels in ``[0, 255]``; float images are the generator's ``[-1, 1]``
    (values outside are clipped). With ``quantize``, float images are rounded to ``uint8`` first, the
    path real data takes; without, they are mapped directly (``(x + 1) / 2`` in place of
    ``pixel / 255``).
    """
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return normalize(x)
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 pixels or floats in [-1, 1], got dtype {x.dtype}")
    if quantize:
        return normalize(to_uint8(x))
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    return ((x.float().clamp(-1, 1) + 1) / 2 - mean) / std


class ClassifierFeatures:
    """``feature_fn(images) -> [N, D]``: penultimate features of a CIFAR-10 classifier.

    Parameters
    ----------
    model : a :mod:`distill_lab.cifar.classifiers` network (anything with ``features(x) -> [B, D]`` on
        normalised images), usually the trained teacher: :meth:`from_teacher`.
    size : images of another size are resized to ``size x size`` (bilinear, antialiased) after
        normalisation, since the classifier was trained at 32 x 32. Generated 16 x 16 images and the
        real images they are compared with must both be 16 x 16 here, so both take the same path.
        ``None`` keeps the size.
    quantize : round float images to ``uint8`` first (see :func:`to_classifier_input`).
    batch_size, device : how the features are computed. The model runs in eval mode (BatchNorm
        with its running statistics) without gradients; its mode is restored afterwards.

    Returns float64 CPU features. Not Inception features: see the module docstring.
    """

    def __init__(self, model: torch.nn.Module, size: int | None = 32, quantize: bool = True,
                 batch_size: int = 500, device: str | torch.device | None = None):
        if not hasattr(model, "features"):
            raise ValueError("the model needs a features(x) -> [B, D] method (see distill_lab.cifar.classifiers)")
        self.model, self.size, self.quantize, self.batch_size = model, size, quantize, batch_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @classmethod
    def from_teacher(cls, path=None, **kwargs) -> "ClassifierFeatures":
        """Features of the committed CIFAR-10 teacher (:func:`distill_lab.cifar.kd_teacher.load_teacher`)."""
        return cls(load_teacher(path or DEFAULT_DIR)["model"], **kwargs)

    @property
    def dim(self) -> int:
        """``D``, the number of features."""
        return int(self.model.feature_dim)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [N, 3, H, W], got {tuple(images.shape)}")
        was_training = self.model.training
        self.model.eval()
        try:
            out = []
            for i in range(0, images.shape[0], self.batch_size):
                x = to_classifier_input(images[i:i + self.batch_size].to(self.device), self.quantize)
                if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                      antialias=True)
                out.append(self.model.features(x).to("cpu", torch.float64))
        finally:
            self.model.train(was_training)
        return torch.cat(out)
