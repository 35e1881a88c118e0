"""Image-restoration metrics: PSNR to a reference, and how far a set's high-frequency spectrum is from
the reference set's.

* :func:`psnr`: ``10 log10(peak^2 / MSE)`` per image, for images in ``[-1, 1]`` (peak-to-peak 2).
  It rewards the posterior *mean*: a blurred guess beats any sharp sample of the same posterior.
* :func:`radial_spectrum`: the set's mean power spectrum (``|FFT|^2`` over each channel, averaged over
  images and channels), averaged over rings of integer radius in frequency.
* :func:`hf_spectrum_error`: the mean absolute difference of the two sets' ``log10`` radial spectra
  over the rings at or above ``lo`` cycles per image (for super-resolution, the frequencies the
  low-resolution input cannot carry). A blurred output loses power there; noise adds it. Its noise
  floor is the same error between two disjoint draws of real images.
"""

from __future__ import annotations

import torch

__all__ = ["psnr", "radial_spectrum", "hf_spectrum_error"]


def _check_images(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be images [N, C, H, W], got {got}")


def psnr(x: torch.Tensor, ref: torch.Tensor, peak: float = 2.0) -> torch.Tensor:
    """``[N]`` PSNR in dB of each image of ``x`` to the same image of ``ref`` (``peak``: the value
    range, 2 for ``[-1, 1]``). Identical images give ``inf``."""
    _check_images(x, "x")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak ** 2 / mse)


def radial_spectrum(x: torch.Tensor) -> torch.Tensor:
    """``[R]`` mean power at each integer frequency radius ``0 .. R - 1`` (``R = H // 2 + 1``, the
    rings that fit inside the square of frequencies), over the images and channels of ``x``."""
    _check_images(x, "x")
    H, W = x.shape[-2:]
    power = torch.fft.fft2(x.double()).abs().pow(2).mean(dim=(0, 1))
    fy = torch.fft.fftfreq(H, d=1.0 / H, device=x.device).abs()
    fx = torch.fft.fftfreq(W, d=1.0 / W, device=x.device).abs()
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long()
    R = min(H, W) // 2 + 1
    keep = radius < R
    zeros = torch.zeros(R, dtype=power.dtype, device=x.device)
    sums = zeros.index_add(0, radius[keep], power[keep])
    counts = zeros.index_add(0, radius[keep], torch.ones_like(power[keep]))
    return (sums / counts).float()


def hf_spectrum_error(x: torch.Tensor, ref: torch.Tensor, lo: int) -> float:
    """Mean over the rings ``r >= lo`` of ``|log10 S_x(r) - log10 S_ref(r)|`` (:func:`radial_spectrum`):
    0 when the sets carry the same power at every high frequency; 1 is a factor of ten."""
    sx, sr = radial_spectrum(x), radial_spectrum(ref)
    if sx.shape != sr.shape:
        raise ValueError(f"x and ref must have the same image size, got {tuple(x.shape[-2:])} and "
                         f"{tuple(ref.shape[-2:])}")
    if not 0 < lo < len(sx):
        raise ValueError(f"lo must be a ring in 1..{len(sx) - 1}, got {lo}")
    return float((sx[lo:].log10() - sr[lo:].log10()).abs().mean())
