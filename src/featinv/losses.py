"""Training losses. Each returns a dict of its parts: ``{"loss": total, "mse": ..., ...}``.

Pixel terms (MSE, L1, 1-SSIM, 1-MS-SSIM) are computed in float32 even under autocast; the
perceptual term runs its backbone under whatever autocast the caller set.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import LOSS_TERMS, LossConfig
from .utils import FeatinvError

TARGET_RANGE_MESSAGE = (
    "loss targets must be [0,1] RGB images; got values outside [0,1] "
    "(ImageNet-normalized targets were the original project's fault)"
)


def check_target_range(target: torch.Tensor) -> None:
    """Refuse targets outside [0,1]. On CUDA the check is asynchronous: no host sync per step."""
    ok = (target.min() >= 0) & (target.max() <= 1)
    if target.is_cuda:
        torch._assert_async(ok, TARGET_RANGE_MESSAGE)
    elif not bool(ok):
        raise ValueError(TARGET_RANGE_MESSAGE)


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - SSIM (Wang et al.: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), batch mean.

    The same value as the SSIM metric (piq, 'valid' windows), but the Gaussian is applied as
    two 1-D passes over the five moment maps at once: about 5x cheaper than five 2-D
    convolutions, which matters when it runs every step.
    """
    c = pred.shape[1]
    g = _gaussian(size, sigma, pred.device)
    maps = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    maps = F.conv2d(maps, g.view(1, 1, 1, size).expand(5 * c, 1, 1, size), groups=5 * c)
    maps = F.conv2d(maps, g.view(1, 1, size, 1).expand(5 * c, 1, size, 1), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = maps.split(c, dim=1)
    c1, c2 = 0.01**2, 0.03**2
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    cs = (2 * (xy - mu_xy) + c2) / ((xx - mu_xx) + (yy - mu_yy) + c2)
    ssim = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs
    return 1.0 - ssim.mean()


def ms_ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM (Wang et al. 2003, five scales), averaged over the batch."""
    import piq

    min_side = min(pred.shape[-2:])
    if min_side <= 160:  # five scales of an 11-pixel window need more than 10 * 2**4 pixels
        raise FeatinvError(f"the MS-SSIM loss needs images larger than 160 pixels, got {min_side}; use --ssim-loss instead.")
    return 1.0 - piq.multi_scale_ssim(pred, target, data_range=1.0, kernel_size=11, kernel_sigma=1.5)


class PerceptualLoss(nn.Module):
    """Feature reconstruction loss (Johnson et al. 2016) through a frozen backbone.

    For each layer, the squared error between the features of the reconstruction and of the
    target, divided by the target features' mean square so that layers of different scales
    weigh alike; the mean over layers. The backbone stays frozen and in eval mode: gradients
    flow through it to the image, never into it.
    """

    def __init__(self, backbone: str, weights: str = "imagenet", layers: Optional[Sequence[str]] = None, seed: int = 0):
        super().__init__()
        from .backbones import FeatureExtractor, get_spec

        layers = list(layers) if layers else get_spec(backbone).default_layers[:2]
        self.extractor = FeatureExtractor(backbone, weights, layers, seed=seed)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = self.extractor(target)
        got = self.extractor(pred)
        terms = [
            F.mse_loss(got[k].float(), want[k].float()) / want[k].float().pow(2).mean().clamp_min(1e-8) for k in want
        ]
        return torch.stack(terms).mean()


class FeatureConsistency(nn.Module):
    """The reconstruction's own features at the run's taps against the original's (the feature
    error of :func:`featinv.metrics.feature_distance`, batch mean, averaged over the taps), through
    the run's frozen backbone: gradients reach the image, never the backbone. The original's
    features are the ones the decoder read, so only the reconstruction takes a backbone pass."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, pred: torch.Tensor, target_features: dict[str, torch.Tensor]) -> torch.Tensor:
        from .metrics import feature_distance, mean_over_taps

        return mean_over_taps(feature_distance(self.extractor(pred), target_features)).mean()


# The loss registry: pixel terms by name (each a function of float32 prediction and target), then
# the perceptual term, which needs a backbone. Each has a weight field of the same name in LossConfig.
PIXEL_TERMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": F.mse_loss, "l1": F.l1_loss, "ssim": ssim_loss, "ms_ssim": ms_ssim_loss,
}
TERMS = LOSS_TERMS  # listed in config, so the CLI names them without importing torch


class ReconstructionLoss(nn.Module):
    """Weighted sum of the enabled terms (``TERMS``, by keyword; mse=1 unless given) between a
    reconstruction and its [0,1] target."""

    def __init__(self, perceptual_module: Optional[PerceptualLoss] = None,
                 feature_module: Optional[FeatureConsistency] = None, **weights: float) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise FeatinvError(f"unknown loss term(s) {', '.join(unknown)}; terms: {', '.join(TERMS)}.")
        weights = {"mse": 1.0, **weights}
        bad = [k for k, w in weights.items() if w < 0 or w != w]
        if bad:
            raise FeatinvError(f"loss weights must be >= 0; got {', '.join(f'{k}={weights[k]}' for k in bad)}.")
        self.weights = {k: float(weights[k]) for k in TERMS if weights.get(k, 0) > 0}
        if not self.weights:
            raise FeatinvError(f"the loss needs a positive weight on at least one term ({', '.join(TERMS)}).")
        if "perceptual" in self.weights and perceptual_module is None:
            raise FeatinvError("a perceptual loss weight needs a PerceptualLoss module (build_loss makes one).")
        self.perceptual = perceptual_module if "perceptual" in self.weights else None
        if "feature" in self.weights and feature_module is None:
            raise FeatinvError("a feature-consistency weight needs the run's backbone (build_loss(..., extractor=...)).")
        self.feature = feature_module if "feature" in self.weights else None

    @property
    def parts(self) -> list[str]:
        """Names of the enabled terms, in the order they are logged."""
        return list(self.weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                features: Optional[dict[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """The parts and their weighted sum; ``features``: the original's features at the run's
        taps, when the caller has them (feature consistency computes them otherwise)."""
        check_target_range(target)
        parts: dict[str, torch.Tensor] = {}
        with torch.autocast(pred.device.type, enabled=False):
            p, t = pred.float(), target.float()
            for k, term in PIXEL_TERMS.items():
                if k in self.weights:
                    parts[k] = term(p, t)
        if self.perceptual is not None:
            parts["perceptual"] = self.perceptual(pred, target).float()
        if self.feature is not None:
            if features is None:
                with torch.no_grad():
                    features = self.feature.extractor(target)
            parts["feature"] = self.feature(pred, features).float()
        parts["loss"] = sum(self.weights[k] * v for k, v in parts.items())
        return parts


def build_loss(cfg: LossConfig, backbone: str = "resnet50", weights: str = "imagenet", seed: int = 0,
               extractor: Optional[nn.Module] = None) -> ReconstructionLoss:
    """The loss ``cfg`` describes; the perceptual term defaults to the run's own backbone, feature
    consistency reads the run's ``extractor``."""
    module = None
    if cfg.perceptual > 0:
        name = cfg.perceptual_backbone or backbone
        w = cfg.perceptual_weights if cfg.perceptual_backbone else weights
        module = PerceptualLoss(name, w, cfg.perceptual_layers or None, seed=seed)
    feature = FeatureConsistency(extractor) if cfg.feature > 0 and extractor is not None else None
    return ReconstructionLoss(module, feature, **{t: getattr(cfg, t) for t in TERMS})
