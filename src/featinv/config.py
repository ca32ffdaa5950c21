"""Configuration: one dataclass tree, saved as ``config.yaml`` in every run directory."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from .utils import PRECISIONS, FeatinvError, atomic_write_text, check_format  # PRECISIONS: utils checks --precision

# 1: featinv 0.1.0 (no format key); 2: a top-level ``format`` key, the sections unchanged;
# 3: ``data.train_crop`` and ``data.full_size_decay`` (formats 1 and 2 trained on crops of the full crop size);
# 4: ``data.preload`` and ``train.epoch_repeats`` (a run writes its batch size and learning rate resolved);
# 5: ``backbone.judge`` and ``decoder.prior_weights`` (older configs read with their defaults).
CONFIG_FORMAT = 5

DEFAULT_LAYERS = ["layer1", "layer2", "layer3", "layer4"]
# The lists of choices, each defined once: the decoders and the CLI take them from here.
SCHEDULES = ("plateau", "cosine", "constant")
PRELOADS = ("auto", "on", "off")
NORMS = ("batch", "none")
UPSAMPLERS = ("resize", "lowres", "pixelshuffle", "convtranspose")
FUSIONS = ("add", "concat")
LOSS_TERMS = ("mse", "l1", "ssim", "ms_ssim", "perceptual", "feature")  # featinv.losses computes them
PROBES = ("invariance", "views", "interpolate", "ablate", "metrics")  # featinv.probe runs them
INVERSIONS = ("optimize", "refine")  # featinv.invert's methods
SWEEP_METHODS = ("decoder", *INVERSIONS)  # the rows a sweep can have


def setting(default: Any = dataclasses.MISSING, help: str = "", *, flag: Optional[str] = "",
            choices: Optional[Sequence[str]] = None, metavar: Optional[str] = None,
            factory: Any = dataclasses.MISSING, path: bool = False) -> Any:
    """A config field and its command-line flag, defined once: ``flag`` "" derives ``--field-name``;
    None gives no flag of its own (``--set SECTION.KEY=VALUE`` reaches every field). The help
    shows the field's default. ``path``: a file or folder, stored absolute."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "metavar": metavar, "path": path}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    data: str = setting("", "image folder (ImageFolder tree or flat, searched recursively) or prepared cache", path=True)
    val_data: Optional[str] = setting(None, "separate validation folder (default: a hash split of --data)", path=True)
    val_fraction: float = setting(0.1, "share of --data held out for validation")
    split_file: Optional[str] = setting(None, "CSV with columns file,split (train/val): a fixed split of --data", path=True)
    image_size: int = setting(224, "crop size", flag=None)
    train_crop: int = setting(128, "size of the random training crops when smaller than the crop size, at the same "
                              "scale (0: the crop size): more crops per second through the decoder's full-resolution "
                              "layers; validation and the decoder's output stay at the crop size. Not with "
                              "--no-augment or the seed decoder, which train at the crop size")
    full_size_decay: bool = setting(True, "with --train-crop and the plateau schedule, the final decay's epochs "
                                    "train on crops of the full crop size, the size the decoder is scored at (as "
                                    "FixRes fine-tunes at the test resolution); off: on the training crops",
                                    flag="--no-full-size-decay")
    resize: int = setting(256, "short side before cropping", flag=None)
    augment: bool = setting(True, "train on random crops with horizontal flips; val is always a center crop",
                            flag="--no-augment")
    crop_scale: float = setting(1.0, "smallest area fraction of a random-resized training crop; 1 = plain random crops")
    color_jitter: float = setting(0.0, "brightness/contrast/saturation jitter of training images, drawn from [1-j, 1+j] "
                                  "(input and target alike)")
    extra_data: list[str] = setting(help="more image folders or prepared caches, every image of them used for training",
                                    factory=list, metavar="DIR", path=True)
    max_images: Optional[int] = setting(None, "use at most N training images (after the split; quick runs)")
    num_workers: int = setting(-1, "data-loader workers; -1 picks from the CPU count", flag="--workers")
    preload: str = setting("auto", "keep a prepared cache's images on the training device and make each batch there "
                           "(crops, flips, jitter as batched tensor operations; no loader workers): on, off, or auto "
                           "(on a GPU when the images take at most a third of its memory)", choices=PRELOADS)
    strict: bool = setting(False, "an unreadable image is an error, not a skip")


@dataclass
class BackboneConfig:
    name: str = setting("resnet50", "backbone name (see `featinv backbones`)", flag="--backbone")
    weights: str = setting("imagenet", "imagenet, random, or a path to a state-dict file")
    layers: list[str] = setting(help="taps to decode from (default: the backbone's four stage outputs)",
                                factory=lambda: list(DEFAULT_LAYERS))
    judge: str = setting("auto", "the independent classifier that scores whether reconstructions keep their "
                         "originals' class (with pretrained backbone weights): a backbone name other than the "
                         "backbone's; auto: efficientnet_lite2 (efficientnet_lite1 for Lite2 itself); none: no judge",
                         metavar="NAME")


@dataclass
class DecoderConfig:
    name: str = setting("ladder", "decoder: ladder, pyramid (one width for every tap), prior (a ladder head into the "
                        "latents of the frozen pretrained autoencoder TAEF2, whose decoder draws the image; needs "
                        "decoder.prior_weights) or seed (the original's baseline)", flag="--decoder")
    width: int = setting(64, "channels of the decoder's path; ladder: at stride 4, doubling with the stride")
    max_width: int = setting(128, "ladder: cap on a path's channels (the coarse taps')")
    blocks: int = setting(2, "residual blocks; ladder: at each tap's scale, pyramid: at the finest")
    upsample: str = setting("resize", "x2 up-sampling: resize (bilinear, then a conv at the new resolution), lowres "
                            "(the conv at the low resolution, then bilinear: a quarter of its multiply-adds), pixelshuffle (ICNR), "
                            "convtranspose (pyramid only; leaves a checkerboard)", choices=UPSAMPLERS)
    fusion: str = setting("add", "pyramid: how coarser maps join finer ones (concat: then a 1x1 conv)", choices=FUSIONS)
    norm: str = setting("batch", "normalization after the decoder's convolutions", choices=NORMS)
    prior_weights: str = setting("", "prior: the folder holding TAEF2's taef2_decoder.pth (not shipped with featinv)",
                                 flag=None, path=True)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``build_decoder`` (the seed decoder takes none)."""
        if self.name == "seed":
            return {}
        if self.name in ("ladder", "prior"):
            ladder = {"width": self.width, "max_width": self.max_width, "blocks": self.blocks,
                      "upsample": self.upsample, "norm": self.norm}
            return {**ladder, "prior_weights": self.prior_weights} if self.name == "prior" else ladder
        return {"width": self.width, "blocks": self.blocks, "upsample": self.upsample, "fusion": self.fusion, "norm": self.norm}


@dataclass
class LossConfig:
    """Weights of the loss terms; a term with weight 0 is not computed. The terms are set together
    by ``--loss TERM=WEIGHT ...`` (featinv.losses.TERMS), one by one by ``--set loss.TERM=W``."""

    mse: float = setting(1.0, "weight of the mean squared error", flag=None)
    l1: float = setting(0.0, "weight of the mean absolute error", flag=None)
    ssim: float = setting(0.0, "weight of 1 - SSIM (Gaussian window 11, sigma 1.5)", flag=None)
    ms_ssim: float = setting(0.0, "weight of 1 - MS-SSIM", flag=None)
    perceptual: float = setting(0.0, "weight of the feature reconstruction loss (Johnson et al. 2016)", flag=None)
    perceptual_backbone: str = setting("", "backbone of the perceptual loss; empty: the run's own, frozen", flag=None)
    perceptual_weights: str = setting("imagenet", "weights of perceptual_backbone", flag=None)
    perceptual_layers: list[str] = setting(help="taps of the perceptual loss (default: its stage1 stage2)", factory=list)
    feature: float = setting(0.0, "weight of feature consistency: the reconstruction's own features at the run's taps "
                             "against the original's, ‖φ(x̂) − φ(x)‖² / ‖φ(x)‖² through the run's frozen backbone", flag=None)


@dataclass
class TrainConfig:
    epochs: int = setting(40, "upper bound on epochs; the plateau schedule usually stops earlier")
    minutes: Optional[float] = setting(None, "time budget: stop when the training passes (validation excluded) have "
                                       "taken this long; the learning-rate schedule follows the budget")
    batch_size: int = setting(0, "batch size per process; 0: 16 on a CPU, on a GPU 256 (128 with less than 40 GB "
                              "of memory)")
    lr: float = setting(0.0, "peak learning rate; 0: 1e-3 at a (global) batch of 16, scaled by the square root of "
                        "the batch's ratio to 16 (batch 256: 4e-3)")
    epoch_repeats: int = setting(0, "passes over the training photos per epoch (validation and the stopping rule "
                                 "read once per epoch); 0: enough passes for 150 steps per epoch at batch sizes "
                                 "above 16, else 1")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    schedule: str = setting("plateau", "learning-rate schedule after warm-up: plateau (constant until val PSNR stops "
                            "rising, then a short decay and stop: the convergence rule), cosine (over --epochs or "
                            "--minutes) or constant", choices=SCHEDULES)
    warmup_epochs: float = setting(0.5, "linear warm-up length in epochs")
    plateau_epochs: int = setting(6, "plateau: compare the mean val PSNR of the last N epochs with that of the N before")
    plateau_db: float = setting(0.1, "plateau: a gain below this many dB is a plateau (see featinv.schedule.plateaued)")
    decay_epochs: int = setting(3, "plateau: epochs of the final decay")
    seed: int = setting(0, "seed for data order, crops and initial weights")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    num_save: int = setting(8, "validation pairs saved at the end")
    log: str = setting("none", "live curves: tensorboard writes every epoch's metrics and a few val reconstructions "
                       "into RUN/tensorboard (the tensorboard extra); none: metrics.csv only", choices=("none", "tensorboard"))
    checkpoint_every: int = setting(200, "steps between mid-epoch checkpoints; 0: epoch ends only")
    precision: str = setting("auto", "autocast precision; auto: bf16 on GPUs and CPUs with native bf16, fp16 on older "
                             "GPUs, else fp32", choices=PRECISIONS)
    channels_last: bool = setting(True, "NHWC tensors for the convolutions", flag=None)
    cudnn_benchmark: bool = setting(True, "let cuDNN time its algorithms for each new input shape (GPU)", flag=None)
    compile: bool = setting(False, "torch.compile the decoder (opt-in: compile time, platform support)")
    grad_clip: float = setting(0.0, "clip the gradient norm to this; 0 turns it off")
    ema: float = setting(0.995, "decay of an exponential moving average of the decoder weights (warmed up over the "
                         "first steps: featinv.training.ema_decay), which are then the ones scored, stopped on and "
                         "saved; 0 turns it off")
    patience: int = setting(0, "stop after this many epochs without a better val PSNR and keep the best weights; "
                            "0 turns it off")
    precise_bn: bool = setting(True, "after the last epoch, recompute the decoder's batch-norm statistics as exact "
                               "averages over (at most 4096) training photos' center crops, with the final weights",
                               flag="--no-precise-bn")
    val_bn_images: int = setting(128, "before each validation, recompute the decoder's batch-norm statistics over this "
                                 "many training photos' center crops (0: score with the running averages), so the val "
                                 "PSNR the stopping rule reads measures the weights, not the last few batches")
    cache_features: bool = setting(False, "with --no-augment: store the frozen backbone's outputs (float16, in "
                                   "RUN/feature_cache) during epoch 1 and train later epochs from them")


@dataclass
class InvertConfig:
    """The search's settings, each with its flag (defaults chosen on training photos: bench/invert.py)."""

    steps: int = setting(500, "Adam steps per image (the step cap)")
    lr: Optional[float] = setting(None, "Adam's step size on [0,1] pixels, cosine-decayed to 1% over the steps "
                                  "(default: 0.02 for optimize, 0.0005 for refine, which starts close)")
    tv_weight: float = setting(0.05, "weight of the total-variation prior")
    tv_beta: float = setting(2.0, "β of the total-variation prior (Mahendran & Vedaldi's TV_β)")
    alpha_weight: float = setting(0.0, "weight of the α-norm prior on the centred image")
    alpha: float = setting(6.0, "α of the α-norm prior")
    jitter: int = setting(0, "pixels of random translation of the image at each step (0: none)")
    init: str = setting("mean", "optimize's start: ImageNet's mean colour, or noise", choices=("mean", "noise"))
    seed: int = setting(0, "seed of the noise start and the jitter")


SECTIONS = {"data": DataConfig, "backbone": BackboneConfig, "decoder": DecoderConfig, "loss": LossConfig,
            "train": TrainConfig}


def field_flag(f: dataclasses.Field) -> Optional[str]:
    """A field's flag: its own, else ``--field-name``; None for a field without one."""
    flag = f.metadata.get("flag", "")
    return None if flag is None else flag or "--" + f.name.replace("_", "-")


def flag_of(section: str, name: str) -> str:
    """The command-line spelling of a setting: its flag, else ``--set section.name``."""
    flag = field_flag(next(f for f in fields(SECTIONS[section]) if f.name == name))
    return flag if flag is not None else f"--set {section}.{name}"


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


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


def _positive(v: Any) -> bool:
    return v > 0 and math.isfinite(v)


# (section, field, test, what it must be): validate_config names the field by its flag.
RULES = [
    ("train", "epochs", lambda v: v >= 1, "at least 1"),
    ("train", "batch_size", lambda v: v >= 0, "at least 1 (or 0: by the device)"),
    ("train", "lr", lambda v: v == 0 or _positive(v), "a positive number (or 0: by the batch size)"),
    ("train", "epoch_repeats", lambda v: v >= 0, "at least 1 (or 0: by the batch size)"),
    ("train", "weight_decay", lambda v: v >= 0, ">= 0"),
    ("train", "plateau_epochs", lambda v: v >= 1, "at least 1"),
    ("train", "plateau_db", lambda v: v >= 0, ">= 0"),
    ("train", "decay_epochs", lambda v: v >= 1, "at least 1"),
    ("train", "warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("train", "minutes", lambda v: v is None or _positive(v), "positive"),
    ("train", "grad_clip", lambda v: v >= 0, ">= 0"),
    ("train", "ema", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("train", "patience", lambda v: v >= 0, ">= 0"),
    ("train", "num_save", lambda v: v >= 0, ">= 0"),
    ("train", "checkpoint_every", lambda v: v >= 0, ">= 0"),
    ("train", "val_bn_images", lambda v: v >= 0, ">= 0"),
    ("data", "crop_scale", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("data", "color_jitter", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data", "val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("data", "image_size", lambda v: v >= 32, "at least 32"),
    ("data", "train_crop", lambda v: v == 0 or v >= 32, "0 or at least 32"),
    ("data", "max_images", lambda v: v is None or v >= 1, "at least 1"),
]


def validate_config(cfg: RunConfig) -> None:
    """Reject impossible settings before any heavy work starts, in one sentence naming the flag."""
    for section, name, ok, must in RULES:
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise FeatinvError(f"{flag_of(section, name)} must be {must}, got {value!r}.")
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            value, choices = getattr(getattr(cfg, section), f.name), f.metadata.get("choices")
            if choices and value not in choices:
                raise FeatinvError(f"{flag_of(section, f.name)} must be one of {', '.join(choices)}, got {value!r}.")
    if cfg.train.cache_features and cfg.data.augment:
        raise FeatinvError("--cache-features needs --no-augment: random crops and flips give new features every epoch.")
    if not cfg.data.data:
        raise FeatinvError("--data is required: a folder of images.")
    if not cfg.backbone.layers:
        raise FeatinvError("--layers needs at least one layer.")
    check_judge(cfg.backbone.judge, cfg.backbone.name)


def check_judge(judge: str, backbone: str) -> None:
    """A judge is another network than the backbone: refused in one sentence otherwise."""
    if judge == backbone:
        raise FeatinvError(f"--judge must be another network than the backbone {backbone}: reconstructions can be "
                           f"made for one network's eyes alone; pick another (or auto).")


def train_crop_size(cfg: RunConfig) -> int:
    """The size of the training crops: ``--train-crop`` when it is smaller than the crop size,
    unless training is on center crops (``--no-augment``) or the decoder's output does not follow
    its input's size (the seed decoder's); otherwise the crop size."""
    d = cfg.data
    if not d.train_crop or not d.augment or cfg.decoder.name == "seed":
        return d.image_size
    return min(d.train_crop, d.image_size)


CPU_BATCH, GPU_BATCH, SMALL_GPU_BATCH = 16, 256, 128
BASE_LR = 1e-3  # at batch CPU_BATCH
MIN_EPOCH_STEPS = 150  # at batch sizes above CPU_BATCH (see epoch_repeats)


def default_batch_size(device: Any) -> int:
    """The batch size a ``torch.device`` trains with by default: 16 on a CPU; on a GPU 256, 128 when
    it has less than 40 GB (the decay's 224-pixel crops at batch 256 need more than a T4's 15 GB)."""
    if getattr(device, "type", "cpu") != "cuda":
        return CPU_BATCH
    import torch

    return GPU_BATCH if torch.cuda.get_device_properties(device).total_memory >= 40e9 else SMALL_GPU_BATCH


def scaled_lr(batch_size: int) -> float:
    """The default peak learning rate at ``batch_size``: the square-root rule for Adam (Malladi et
    al. 2022), 1e-3 at batch 16."""
    return BASE_LR * math.sqrt(batch_size / CPU_BATCH)


def resolve_recipe(cfg: RunConfig, device: Any, world: int = 1) -> RunConfig:
    """``cfg`` with the settings that follow the device filled in (batch size 0: per process;
    learning rate 0: by the global batch of ``world`` processes), as config.yaml records them."""
    t = cfg.train
    batch = t.batch_size or default_batch_size(device)
    lr = t.lr or scaled_lr(batch * world)
    if (batch, lr) == (t.batch_size, t.lr):
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(t, batch_size=batch, lr=lr))


def epoch_repeats(cfg: RunConfig, n_images: int, world: int = 1) -> int:
    """Passes over the ``n_images`` training photos per epoch: ``train.epoch_repeats``, or with 0, 1 at
    batch sizes up to 16 and otherwise enough for MIN_EPOCH_STEPS steps per epoch, so that a large
    batch on a small set still validates (and lets the stopping rule look) after as much training
    as batch 16 on ~2,400 photos does, not after a handful of steps."""
    t = cfg.train
    if t.epoch_repeats:
        return t.epoch_repeats
    if t.batch_size <= CPU_BATCH:
        return 1
    return max(1, math.ceil(MIN_EPOCH_STEPS * t.batch_size * world / max(1, n_images)))


def decay_crop_size(cfg: RunConfig) -> int:
    """The size of the training crops during the plateau schedule's final decay: the crop size
    with ``data.full_size_decay`` (the default), otherwise :func:`train_crop_size`."""
    if cfg.data.full_size_decay and cfg.train.schedule == "plateau":
        return cfg.data.image_size
    return train_crop_size(cfg)


def save_config(cfg: RunConfig, path: Union[str, Path]) -> None:
    atomic_write_text(path, yaml.safe_dump({"format": CONFIG_FORMAT, **cfg.to_dict()}, sort_keys=False))


def load_config(path: Union[str, Path]) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise FeatinvError(f"config file {path} does not exist.")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise FeatinvError(f"config file {path} is not valid YAML: {e}") from None
    if isinstance(d, dict):
        version = check_format(d.pop("format", None), CONFIG_FORMAT, "a config file of", path)
        if version < 3 and isinstance(d.get("data"), dict):
            d["data"].setdefault("train_crop", 0)  # it trained (and resumes) on crops of the full size
    return RunConfig.from_dict(d)
