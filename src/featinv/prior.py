"""A pretrained image prior: the tiny autoencoder TAEF2 (Ollin Boer Bohan, MIT licence).

TAEF2 maps a [0,1] RGB image to 32 latent channels at stride 8 and back; it was distilled for the
FLUX.2 VAE's latent space, from photos, so its decoder draws natural-image texture from a
28×28×32 latent of a 224 crop. featinv writes the architecture here (a short stack of
convolution blocks) and loads the published weights strictly, from a file or folder the user
points at (``taef2_encoder.pth``, ``taef2_decoder.pth``), never from the network.
The weights are not part of featinv; their origin and licence are in docs/concepts.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import nn

from .utils import FeatinvError

LATENT_CHANNELS = 32
STRIDE = 8
FILES = {"encoder": "taef2_encoder.pth", "decoder": "taef2_decoder.pth"}


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    """A soft clamp of the latents to (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    """Three 3×3 convolutions with a residual path; at the latent resolution a 1×1 bottleneck
    with group norm (``pool``) first adds normalised context to the input."""

    def __init__(self, n: int = 64, context: bool = False) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(n, n), nn.ReLU(), _conv(n, n), nn.ReLU(), _conv(n, n))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = nn.Sequential(nn.Conv2d(n, 4 * n, 1, bias=False), nn.GroupNorm(4, 4 * n), nn.ReLU(),
                                  nn.Conv2d(4 * n, n, 1, bias=False)) if context else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def _down() -> nn.Conv2d:
    return _conv(64, 64, stride=2, bias=False)


def _up() -> list[nn.Module]:
    return [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]


def build_encoder() -> nn.Sequential:
    """Image [0,1] → latents (B×32×H/8×W/8)."""
    blocks = lambda context=False: [_Block(context=context) for _ in range(3)]  # noqa: E731
    return nn.Sequential(_conv(3, 64), _Block(), _down(), *blocks(), _down(), *blocks(), _down(), *blocks(True),
                         _conv(64, LATENT_CHANNELS))


def build_decoder() -> nn.Sequential:
    """Latents → image (about [0,1]; clamp for display)."""
    blocks = lambda context=False: [_Block(context=context) for _ in range(3)]  # noqa: E731
    return nn.Sequential(_Clamp(), _conv(LATENT_CHANNELS, 64), nn.ReLU(), *blocks(True), *_up(), *blocks(), *_up(),
                         *blocks(), *_up(), _Block(), _conv(64, 3))


def load_part(part: str, weights: Union[str, Path]) -> nn.Sequential:
    """The TAEF2 ``part`` ("encoder" or "decoder") with its weights from ``weights`` (the file, or
    a folder holding ``taef2_<part>.pth``), loaded strictly as float32 and with ``weights_only``."""
    if part not in FILES:
        raise FeatinvError(f"the prior has an encoder and a decoder, not {part!r}.")
    path = Path(weights).expanduser()
    path = path / FILES[part] if path.is_dir() else path
    if not path.is_file():
        raise FeatinvError(f"no TAEF2 {part} weights at {path}; give the folder that holds {FILES[part]} "
                           f"(the docs' concepts page says where they come from).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build_encoder() if part == "encoder" else build_decoder()
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        raise FeatinvError(f"{path} is not a TAEF2 {part}: {str(e).splitlines()[0]}") from None
    return model
