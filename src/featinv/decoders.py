"""Decoders: ``forward(features: dict[str, Tensor]) -> B×3×S×S`` images in [0,1].

Each decoder is built from the feature shapes it will receive (``{name: (C, H, W)}``) and the
output size, so any subset of taps works. ``decoder.spec()`` is the plain dict that rebuilds it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import FUSIONS, NORMS, UPSAMPLERS  # noqa: F401 - the lists of choices, defined once
from .utils import FeatinvError

Shapes = dict[str, tuple[int, int, int]]


def _stages(image_size: int, size: int) -> int:
    """How many ×2 up-samplings take ``size`` to about ``image_size``."""
    return max(0, round(math.log2(image_size / size)))


def _output_size(finest: torch.Tensor, scale: float) -> tuple[int, int]:
    """The image size of the finest map ``finest``: its size times the stride the decoder was
    built for. At the build's image size that is the image size; a smaller training crop
    (``--train-crop``) gets an output of its own size."""
    return round(finest.shape[-2] * scale), round(finest.shape[-1] * scale)


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
    elif kind == "lowres":
        layers = [nn.Conv2d(a, b, 3, padding=1, bias=norm == "none"), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
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
        self.fusion = fusion
        # Coarse to fine; ties keep the caller's order.
        self.order = sorted(shapes, key=lambda k: shapes[k][1])
        # ModuleDict keys cannot hold dots, which raw graph node names (layer3.5.relu_2) do.
        self.key = {k: k.replace(".", "_") for k in self.order}
        self.lateral = nn.ModuleDict(
            {self.key[k]: nn.Sequential(nn.Conv2d(shapes[k][0], width, 1, bias=norm == "none"), _norm(norm, width))
             for k in self.order}
        )
        if fusion == "concat":
            self.merge = nn.ModuleDict({self.key[k]: nn.Conv2d(2 * width, width, 1) for k in self.order[1:]})
        self.refine = nn.ModuleDict({self.key[k]: _conv_norm_relu(width, width, norm) for k in self.order})
        self.blocks = nn.Sequential(*(ResBlock(width, norm) for _ in range(blocks)))
        finest = shapes[self.order[-1]][1]
        self.scale = image_size / finest
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
            key = self.key[k]
            lat = self.lateral[key](features[k])
            if x is not None:
                x = F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
                x = x + lat if self.fusion == "add" else self.merge[key](torch.cat([x, lat], dim=1))
            else:
                x = lat
            x = self.refine[key](x)
        size = _output_size(x, self.scale)
        x = self.out(self.up(self.blocks(x)))
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


def _icnr_(conv: nn.Conv2d, scale: int = 2) -> None:
    """ICNR initialisation (Aitken et al. 2017): every sub-pixel of a PixelShuffle output starts
    from the same kernel, so the up-sampled map has no checkerboard at initialisation."""
    out_ch = conv.out_channels // scale**2
    w = torch.empty(out_ch, *conv.weight.shape[1:])
    nn.init.kaiming_normal_(w, nonlinearity="relu")
    with torch.no_grad():
        conv.weight.copy_(w.repeat_interleave(scale**2, dim=0))
        if conv.bias is not None:
            conv.bias.zero_()


class UpStage(nn.Module):
    """One ×2 up-sampling from ``a`` to ``b`` channels without a checkerboard.

    ``resize``: bilinear ×2 then a 3×3 conv (Odena et al. 2016). ``lowres``: the 3×3 conv at the
    low resolution, then bilinear ×2: a quarter of the conv's multiply-adds and less memory traffic
    at the new resolution, where the thin full-resolution maps cost most of a decoder's time on a CPU;
    like ``resize`` it has the same weights at every output pixel, so a flat map stays flat.
    ``pixelshuffle``: a 3×3 conv at the low resolution to 4·b channels, then PixelShuffle,
    ICNR-initialised. Then norm and ReLU.
    """

    def __init__(self, a: int, b: int, kind: str = "resize", norm: str = "batch") -> None:
        super().__init__()
        if kind not in LADDER_UPSAMPLERS:
            raise FeatinvError(f"decoder upsample must be one of {', '.join(LADDER_UPSAMPLERS)}, got {kind!r}.")
        self.kind = kind
        if kind == "pixelshuffle":
            self.conv = nn.Conv2d(a, 4 * b, 3, padding=1, bias=norm == "none")
            _icnr_(self.conv)
        else:
            self.conv = nn.Conv2d(a, b, 3, padding=1, bias=norm == "none")
        self.post = nn.Sequential(_norm(norm, b), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, size: Optional[tuple[int, int]] = None) -> torch.Tensor:
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        if self.kind == "pixelshuffle":
            x = F.pixel_shuffle(self.conv(x), 2)
            if tuple(x.shape[-2:]) != tuple(size):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        elif self.kind == "lowres":
            x = F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)
        else:
            x = self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.post(x)


LADDER_UPSAMPLERS = ("resize", "lowres", "pixelshuffle")


class LadderDecoder(nn.Module):
    """Capacity where the information is: a path whose width follows the stride.

    The path at stride ``s`` carries ``width·s/4`` channels (at most ``max_width``): a coarse map
    gets many channels and ``blocks`` residual blocks before it is up-sampled, and channels halve
    as resolution doubles (Dosovitskiy & Brox 2016), so every scale costs about the same. Each
    tap enters at its own resolution through a 1×1 projection with batch norm. Starting at the
    coarsest tap, the path is refined by residual blocks, up-sampled (resize-conv or ICNR
    PixelShuffle: no checkerboard) and joins the next finer tap through a **zero-initialised**
    1×1 conv: at initialisation the decoder computes exactly what the finest tap's own decoder
    computes, so a deeper tap can only add what training finds useful. From the finest tap,
    ×2 stages reach the image size; a 3×3 conv and a Sigmoid give RGB in [0,1]. The output is
    the finest map's size times its stride, so the maps of a smaller crop (``--train-crop``)
    give an image of the crop's size.

    The finest tap's modules are built first, from the same random stream as the finest tap's
    own decoder, so the two also start from the same weights.
    """

    def __init__(
        self,
        shapes: Shapes,
        image_size: int = 224,
        width: int = 64,
        max_width: int = 256,
        blocks: int = 2,
        upsample: str = "resize",
        norm: str = "batch",
        **_: Any,
    ) -> None:
        super().__init__()
        if width < 8 or max_width < width:
            raise FeatinvError(f"decoder width must be at least 8 and at most max_width, got {width} and {max_width}.")
        if blocks < 0:
            raise FeatinvError(f"decoder blocks must be >= 0, got {blocks}.")
        if norm not in NORMS:
            raise FeatinvError(f"decoder norm must be one of {', '.join(NORMS)}, got {norm!r}.")
        if upsample not in LADDER_UPSAMPLERS:
            raise FeatinvError(f"decoder upsample must be one of {', '.join(LADDER_UPSAMPLERS)}, got {upsample!r}.")
        # Fine to coarse for building (the finest path first, see above); ties keep the caller's order.
        fine_first = sorted(shapes, key=lambda k: -shapes[k][1])
        self.order = fine_first[::-1]  # coarse to fine, the forward order
        finest = shapes[fine_first[0]][1]
        self.scale = image_size / finest
        self.stride = {k: image_size / shapes[k][1] for k in shapes}

        def chans(stride: float) -> int:
            return int(min(max_width, max(16, round(width * stride / 4))))

        # Module names are indices: raw graph node names (``layer3.5.relu_2``) hold dots.
        self.lateral = nn.ModuleList()
        self.body = nn.ModuleList()
        self.join = nn.ModuleList()  # join[i]: up-sampling from tap i+1 (coarser) to tap i's scale
        self.gate = nn.ModuleList()  # gate[i]: the zero-initialised 1×1 conv through which it joins

        def add_tap(k: str) -> None:
            c = chans(self.stride[k])
            self.lateral.append(nn.Sequential(nn.Conv2d(shapes[k][0], c, 1, bias=norm == "none"), _norm(norm, c)))
            self.body.append(nn.Sequential(*(ResBlock(c, norm) for _ in range(blocks))))

        # The finest tap's own decoder first: lateral, blocks, ×2 stages to the image, output.
        add_tap(fine_first[0])
        up: list[nn.Module] = []
        c = chans(self.stride[fine_first[0]])
        for _ in range(_stages(image_size, finest)):
            nxt = max(c // 2, 16)
            up.append(UpStage(c, nxt, upsample, norm))
            c = nxt
        self.up = nn.ModuleList(up)
        self.out = nn.Sequential(nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid())
        # Deeper taps after it: their parameters do not shift the finest path's random stream.
        for i, k in enumerate(fine_first[1:], start=1):
            add_tap(k)
            finer = fine_first[i - 1]
            c, c_finer = chans(self.stride[k]), chans(self.stride[finer])
            steps = max(1, _stages(self.stride[k], self.stride[finer]))
            stages = []
            for s in range(steps):
                nxt = c_finer if s == steps - 1 else max(c // 2, c_finer)
                stages.append(UpStage(c, nxt, upsample, norm))
                c = nxt
            self.join.append(nn.ModuleList(stages))
            gate = nn.Conv2d(c_finer, c_finer, 1)
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)
            self.gate.append(gate)
        self.index = {k: i for i, k in enumerate(fine_first)}

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x: Optional[torch.Tensor] = None
        for k in self.order:
            i = self.index[k]
            lat = self.lateral[i](features[k])
            if x is not None:  # x comes from tap i+1, the next coarser one
                stages = self.join[i]
                for j, stage in enumerate(stages):
                    x = stage(x, lat.shape[-2:] if j == len(stages) - 1 else None)
                lat = lat + self.gate[i](x)
            x = self.body[i](lat)
        size = _output_size(x, self.scale)
        for stage in self.up:
            x = stage(x)
        x = self.out(x)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x




class PriorDecoder(nn.Module):
    """Features → the latents of a frozen pretrained autoencoder (TAEF2, :mod:`featinv.prior`),
    whose decoder draws the image: natural-image texture comes from the prior, and the trained
    head only has to say where to place what.

    The head is a :class:`LadderDecoder` that stops at the latent stride (8) with 32 latent
    channels instead of an RGB image (a stride-4 tap's path is resized down to it). The autoencoder's decoder
    is held outside the module's parameters, so its weights are neither trained nor written into
    ``decoder.safetensors``: ``prior_weights`` (the folder holding ``taef2_decoder.pth``, kept in
    the decoder's spec) loads them again when the run is rebuilt."""

    def __init__(self, shapes: Shapes, image_size: int = 224, prior_weights: str = "", **options: Any) -> None:
        super().__init__()
        from .prior import LATENT_CHANNELS, STRIDE, load_part

        if not prior_weights:
            raise FeatinvError("the prior decoder needs the TAEF2 weights: --set decoder.prior_weights=FOLDER "
                               "(the folder holding taef2_decoder.pth).")
        latent_size = image_size // STRIDE
        # the ladder reaches latent_size from the finest tap; its RGB output becomes a latent projection
        self.head = LadderDecoder(shapes, image_size=latent_size, **options)
        c = self.head.out[0].in_channels
        self.head.out = nn.Conv2d(c, LATENT_CHANNELS, 3, padding=1)
        self.scale = image_size / max(s[1] for s in shapes.values())  # the finest tap's stride
        self._prior = [load_part("decoder", prior_weights).eval().requires_grad_(False)]

    def _apply(self, fn: Any, recurse: bool = True) -> "PriorDecoder":
        super()._apply(fn, recurse)
        self._prior[0]._apply(fn, recurse)  # device and dtype moves reach the frozen prior too
        return self

    def latents(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(features)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.latents(features)
        x = self._prior[0](z)
        finest = min(features.values(), key=lambda t: -t.shape[-1])
        size = _output_size(finest, self.scale)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.clamp(0, 1)


DECODERS: dict[str, Callable[..., nn.Module]] = {
    "seed": SeedDecoder, "pyramid": PyramidDecoder, "ladder": LadderDecoder, "prior": PriorDecoder,
}


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
