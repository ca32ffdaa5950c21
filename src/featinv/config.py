"""Configuration: one dataclass tree, saved as ``config.yaml`` in every run directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .utils import FeatinvError, atomic_write_text

DEFAULT_LAYERS = ["layer1", "layer2", "layer3", "layer4"]


@dataclass
class DataConfig:
    data: str = ""  # image folder (ImageFolder tree or flat, searched recursively)
    val_data: Optional[str] = None  # explicit validation folder; else a hash split of `data`
    val_fraction: float = 0.1
    split_file: Optional[str] = None  # CSV with columns file,split (train/val): a fixed split of `data`
    image_size: int = 224  # crop size
    resize: int = 256  # short side before cropping
    augment: bool = True  # train: random crop + horizontal flip; val is always a center crop
    crop_scale: float = 1.0  # augment: smallest crop area (fraction) of a random-resized crop; 1 = plain random crop
    color_jitter: float = 0.0  # augment: brightness/contrast/saturation drawn from [1-j, 1+j] (input and target alike)
    extra_data: list[str] = field(default_factory=list)  # more folders or caches, all of them training images
    max_images: Optional[int] = None  # cap on training images (after the split), for quick runs
    num_workers: int = -1  # DataLoader workers; -1 picks from the CPU count
    strict: bool = False  # any unreadable file is an error instead of a skip


@dataclass
class BackboneConfig:
    name: str = "resnet50"
    weights: str = "imagenet"  # "imagenet", "random" or a path to a state-dict file
    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))


@dataclass
class DecoderConfig:
    name: str = "ladder"  # ladder | pyramid | seed (the original's baseline)
    width: int = 64  # ladder: channels of the path at stride 4 (doubling with the stride); pyramid: channels of the path
    max_width: int = 128  # ladder: cap on a path's channels (the coarse taps')
    blocks: int = 2  # ladder: residual blocks at each tap's scale; pyramid: at the finest map's scale
    upsample: str = "resize"  # resize (bilinear + conv) | pixelshuffle (ICNR); pyramid also convtranspose
    fusion: str = "add"  # pyramid: add | concat (then a 1x1 conv)
    norm: str = "batch"  # batch | none

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``build_decoder`` (the seed decoder takes none)."""
        if self.name == "seed":
            return {}
        if self.name == "ladder":
            return {"width": self.width, "max_width": self.max_width, "blocks": self.blocks,
                    "upsample": self.upsample, "norm": self.norm}
        return {"width": self.width, "blocks": self.blocks, "upsample": self.upsample, "fusion": self.fusion, "norm": self.norm}


@dataclass
class LossConfig:
    """Weights of the loss terms; a term with weight 0 is not computed."""

    mse: float = 1.0
    l1: float = 0.0
    ssim: float = 0.0  # 1 - SSIM (Gaussian window 11, sigma 1.5)
    ms_ssim: float = 0.0  # 1 - MS-SSIM
    perceptual: float = 0.0  # feature reconstruction loss (Johnson et al. 2016)
    perceptual_backbone: str = ""  # "" = the run's own frozen backbone; else a registry name
    perceptual_weights: str = "imagenet"  # weights of perceptual_backbone
    perceptual_layers: list[str] = field(default_factory=list)  # [] = the backbone's stage1, stage2


@dataclass
class TrainConfig:
    epochs: int = 40  # upper bound on epochs; the plateau schedule usually stops earlier
    minutes: Optional[float] = None  # budget of training-step time; ends the run early, schedule follows it
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "plateau": linear warm-up, a constant rate, then a cosine decay over decay_epochs started when
    # val PSNR stops rising (see featinv.train.plateaued), after which training stops, converged.
    # "cosine": warm-up then cosine over the whole budget; "constant": warm-up then constant.
    schedule: str = "plateau"
    warmup_epochs: float = 0.5
    plateau_epochs: int = 4  # plateau: the window of epochs whose best val PSNR is compared ...
    plateau_db: float = 0.1  # ... with the best before it: a gain below this many dB is a plateau
    decay_epochs: int = 3  # plateau: epochs of the final decay
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_save: int = 8  # original/reconstruction pairs saved at the end
    checkpoint_every: int = 200  # steps between mid-epoch checkpoints (0: epoch ends only)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (autocast for the forward passes)
    channels_last: bool = True  # NHWC tensors for the convolutions
    compile: bool = False  # torch.compile the decoder (opt-in: compile time, platform support)
    grad_clip: float = 0.0  # clip the gradient norm to this (0: off)
    ema: float = 0.0  # decay of an exponential moving average of the decoder weights (0: off)
    patience: int = 0  # stop after this many epochs without a better val PSNR (0: off)
    cache_features: bool = False  # keep the backbone outputs (float16, on disk) after epoch 1; needs augment off


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    notes: list[str] = field(default_factory=list)  # free text carried into every output

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, d, "")


def _from_dict(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise FeatinvError(f"config section '{where or 'top'}' must be a mapping, got {d!r}.")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise FeatinvError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys here: {', '.join(sorted(names))}."
        )
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _from_dict(tp, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(tp, value, where + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
        origin = get_origin(tp)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise FeatinvError(f"config key '{key}' must be a list, got {value!r}.")
        return [str(v) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise FeatinvError(f"config key '{key}' must be true or false, got {value!r}.")
        return value
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise FeatinvError(f"config key '{key}' must be {tp.__name__}, got {value!r}.") from None


def diff_configs(a: dict, b: dict, prefix: tuple = ()) -> list[tuple]:
    """Keys (as tuples of section names) whose values differ between two config dicts."""
    out = []
    for k in a:
        if isinstance(a[k], dict):
            out += diff_configs(a[k], b.get(k, {}), prefix + (k,))
        elif a[k] != b.get(k):
            out.append(prefix + (k,))
    return out


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_config(path: Union[str, Path]) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"config file {path} does not exist.")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FeatinvError(f"config file {path} is not valid YAML: {e}") from None
    return RunConfig.from_dict(d)
