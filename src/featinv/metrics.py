"""Per-image image-quality metrics on [0,1] RGB, and the reference lines that give them context.

Every metric takes ``pred`` and ``target`` of shape B×3×H×W with values in [0,1] and returns a
tensor of B per-image values; a dataset's score is the mean of its per-image values.
SSIM is Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, averaged over the RGB
channels, computed by ``piq`` (checked against scikit-image in the tests).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# PSNR of identical images is infinite; this floor on the MSE caps it at 100 dB so means stay finite.
_MSE_FLOOR = 1e-10


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}.")
    if pred.dim() != 4:
        raise ValueError(f"expected B×C×H×W tensors, got shape {tuple(pred.shape)}.")
    for name, t in (("pred", pred), ("target", target)):
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0 or lo != lo or hi != hi:
            raise ValueError(
                f"{name} has values in [{lo:.4g}, {hi:.4g}]; metrics need images in [0, 1] "
                "(un-normalize ImageNet-normalized tensors first)."
            )


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each image (over C, H, W)."""
    _check(pred, target)
    return (pred.double() - target.double()).pow(2).flatten(1).mean(1).to(pred.dtype)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB (peak 1.0)."""
    _check(pred, target)
    err = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return (-10.0 * torch.log10(err.clamp_min(_MSE_FLOOR))).to(pred.dtype)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image (Wang et al. 2004, Gaussian 11×11, σ 1.5)."""
    import piq

    _check(pred, target)
    return piq.ssim(
        pred, target, data_range=1.0, kernel_size=11, kernel_sigma=1.5,
        k1=0.01, k2=0.03, downsample=False, reduction="none",
    )


def score(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """All three metrics, per image: ``{"mse": B, "psnr": B, "ssim": B}``."""
    return {"mse": mse(pred, target), "psnr": psnr(pred, target), "ssim": ssim(pred, target)}


def bicubic_thumbnail(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Down-sample by ``stride`` (antialiased bicubic) and back up: what a map of that
    resolution would hold if it kept only colour. A reference line, not a decoder."""
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, h // stride), max(1, w // stride)), mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False).clamp_(0.0, 1.0)


class MeanAccumulator:
    """Running sums of per-image metric values; ``result()`` gives means over images."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.double().sum())
        self.n += len(next(iter(values.values())))

    def result(self) -> dict[str, float]:
        return {k: s / self.n for k, s in self.sums.items()} if self.n else {}


def feature_distance(feats: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, per image: ‖φ(x̂) − φ(x)‖² / ‖φ(x)‖², the feature error of a reconstruction."""
    out = {}
    for k, t in target.items():
        t = t.float().flatten(1)
        out[k] = (feats[k].float().flatten(1) - t).pow(2).sum(1) / t.pow(2).sum(1).clamp_min(1e-12)
    return out


def feature_cosine(feats: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, per image: the cosine similarity of φ(x̂) and φ(x), each flattened (FeatInv's score)."""
    return {k: torch.nn.functional.cosine_similarity(feats[k].float().flatten(1), t.float().flatten(1), dim=1, eps=1e-12)
            for k, t in target.items()}


def mean_over_taps(errors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image: per-tap values (:func:`feature_distance`, :func:`feature_cosine`) averaged over the taps."""
    return torch.stack(list(errors.values())).mean(0)
