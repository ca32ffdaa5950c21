"""Decoders: ``forward(features: dict[str, Tensor]) -> B×3×S×S`` images in [0,1].

Each decoder is built from the feature shapes it will receive (``{name: (C, H, W)}``) and the
output size, so any subset of taps works. ``decoder.spec()`` is the plain dict that rebuilds it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .utils import FeatinvError

Shapes = dict[str, tuple[int, int, int]]


def _stages(image_size: int, size: int) -> int:
    """How many ×2 up-samplings take ``size`` to about ``image_size``."""
    return max(0, round(math.log2(image_size / size)))


class SeedDecoder(nn.Module):
    """The original project's ConvOnlyDecoder, kept as the baseline.

    All selected maps are bilinearly resized to the coarsest map's size and concatenated on
    channels, then ConvTranspose2d(k=4, s=2, p=1) stages with ReLU between and a Sigmoid last.
    From 7×7 (any set that includes a stride-32 map) that is the original's five stages,
    →512→256→128→64→3; a finer coarsest map uses the last stages of that list only.
    """

    def __init__(self, shapes: Shapes, image_size: int = 224, **_: Any) -> None:
        super().__init__()
        self.layers = list(shapes)
        self.image_size = image_size
        self.size = min(s[1] for s in shapes.values()), min(s[2] for s in shapes.values())
        in_ch = sum(s[0] for s in shapes.values())
        n = max(1, _stages(image_size, self.size[0]))
        widths = ([512, 256, 128, 64] * 2)[-(n - 1) :] if n > 1 else []
        chans = [in_ch, *widths, 3]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans[:-1], chans[1:])):
            mods.append(nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1))
            mods.append(nn.ReLU(inplace=True) if i < len(chans) - 2 else nn.Sigmoid())
        self.net = nn.Sequential(*mods)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        maps = [
            f if tuple(f.shape[-2:]) == self.size else F.interpolate(f, size=self.size, mode="bilinear", align_corners=False)
            for f in (features[k] for k in self.layers)
        ]
        x = self.net(torch.cat(maps, dim=1))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x


NORMS = ("batch", "none")
UPSAMPLERS = ("pixelshuffle", "convtranspose", "resize")
FUSIONS = ("add", "concat")


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "batch" else nn.Identity()


def _conv_norm_relu(a: int, b: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=norm == "none"), _norm(norm, b), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input (He et al.; EDSR drops the norm)."""

    def __init__(self, c: int, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=norm == "none"), _norm(norm, c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=norm == "none"), _norm(norm, c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _upsample(kind: str, a: int, b: int, norm: str) -> nn.Sequential:
    """One ×2 stage from ``a`` to ``b`` channels."""
    if kind == "pixelshuffle":  # the conv runs at the low resolution, then channels become pixels
        layers = [nn.Conv2d(a, 4 * b, 3, padding=1, bias=norm == "none"), nn.PixelShuffle(2)]
    elif kind == "convtranspose":
        layers = [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1, bias=norm == "none")]
    else:
        layers = [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(a, b, 3, padding=1, bias=norm == "none")]
    return nn.Sequential(*layers, _norm(norm, b), nn.ReLU(inplace=True))


class PyramidDecoder(nn.Module):
    """Each map enters at its native resolution; a top-down path fuses them coarse to fine.

    A 1×1 projection (with batch norm, which tames the very different scales of backbone
    stages) brings every map to ``width`` channels. Starting from the coarsest, the path
    up-samples to the next finer map's size, fuses it (``add``, or ``concat`` then a 1×1 conv)
    and refines with a 3×3 conv. ``blocks`` residual blocks then work at the finest map's
    resolution, where they are cheap; ×2 stages (``upsample``: PixelShuffle, ConvTranspose or
    bilinear resize + conv, halving channels) reach the image size; a 3×3 conv and a Sigmoid
    give RGB in [0,1].
    """

    def __init__(
        self,
        shapes: Shapes,
        image_size: int = 224,
        # These keyword defaults are the first pyramid's, so that a decoder.json written before
        # the other knobs existed (its options hold only the width) rebuilds the same network.
        # New runs pass every option from DecoderConfig, whose defaults are the measured ones.
        width: int = 128,
        blocks: int = 0,
        upsample: str = "resize",
        fusion: str = "add",
        norm: str = "batch",
        **_: Any,
    ) -> None:
        super().__init__()
        if width < 8:
            raise FeatinvError(f"decoder width must be at least 8, got {width}.")
        if blocks < 0:
            raise FeatinvError(f"decoder blocks must be >= 0, got {blocks}.")
        for value, allowed, what in ((upsample, UPSAMPLERS, "upsample"), (fusion, FUSIONS, "fusion"), (norm, NORMS, "norm")):
            if value not in allowed:
                raise FeatinvError(f"decoder {what} must be one of {', '.join(allowed)}, got {value!r}.")
        self.image_size = image_size
        self.fusion = fusion
        # Coarse to fine; ties keep the caller's order.
        self.order = sorted(shapes, key=lambda k: shapes[k][1])
        self.lateral = nn.ModuleDict(
            {k: nn.Sequential(nn.Conv2d(shapes[k][0], width, 1, bias=False), nn.BatchNorm2d(width)) for k in self.order}
        )
        if fusion == "concat":
            self.merge = nn.ModuleDict({k: nn.Conv2d(2 * width, width, 1) for k in self.order[1:]})
        self.refine = nn.ModuleDict({k: _conv_norm_relu(width, width, norm) for k in self.order})
        self.blocks = nn.Sequential(*(ResBlock(width, norm) for _ in range(blocks)))
        finest = shapes[self.order[-1]][1]
        up: list[nn.Module] = []
        c = width
        for _ in range(_stages(image_size, finest)):
            nxt = max(c // 2, 16)
            up.append(_upsample(upsample, c, nxt, norm))
            c = nxt
        self.up = nn.Sequential(*up)
        self.out = nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid())

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = None
        for k in self.order:
            lat = self.lateral[k](features[k])
            if x is not None:
                x = F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
                x = x + lat if self.fusion == "add" else self.merge[k](torch.cat([x, lat], dim=1))
            else:
                x = lat
            x = self.refine[k](x)
        x = self.out(self.up(self.blocks(x)))
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return x


DECODERS: dict[str, Callable[..., nn.Module]] = {"seed": SeedDecoder, "pyramid": PyramidDecoder}


def build_decoder(name: str, shapes: Shapes, image_size: int = 224, **options: Any) -> nn.Module:
    """Build decoder ``name`` for feature maps of ``shapes``; ``decoder.spec`` rebuilds it."""
    if name not in DECODERS:
        raise FeatinvError(f"unknown decoder '{name}'; available: {', '.join(DECODERS)}.")
    model = DECODERS[name](shapes, image_size=image_size, **options)
    model.spec = {
        "name": name,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "image_size": image_size,
        "options": dict(options),
    }
    return model


def decoder_from_spec(spec: dict[str, Any]) -> nn.Module:
    shapes = {k: tuple(v) for k, v in spec["shapes"].items()}
    return build_decoder(spec["name"], shapes, spec["image_size"], **spec.get("options", {}))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
