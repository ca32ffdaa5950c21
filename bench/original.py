"""The original project's training loop, re-created once for the benchmarks that compare with it.

As its README and code describe it: torchvision's ImageFolder decoding JPEGs every step,
num_workers=0, batch 8, fp32, forward hooks on the full network capturing the stage outputs,
the maps concatenated at 7×7 into the ``seed`` decoder, Adam 1e-3 at a constant rate, MSE
against ImageNet-*normalized* targets (its fault, kept: what its users got; ``fixed_targets``
compares with [0,1] targets), and ``loss.item()`` every step (it logged every step).
bench/throughput.py times it; bench/quality_at_budget.py scores it.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@contextmanager
def image_folder(files: Sequence[Path]) -> Iterator[str]:
    """A temporary ImageFolder root (one class level) of symlinks to ``files``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train" / "all"
        folder.mkdir(parents=True)
        for f in files:
            (folder / f.name).symlink_to(Path(f).resolve())
        yield str(folder.parent)


class OriginalLoop:
    """The loop's parts: ``model`` (hooked), ``decoder``, ``step(x)``; ``run(root, stop)`` trains."""

    def __init__(self, model: torch.nn.Module, taps: dict[str, str], to_backbone: Callable, device: torch.device,
                 fixed_targets: bool = False, seed: int = 0) -> None:
        from torchvision import transforms

        from featinv.decoders import SeedDecoder

        self.model, self.to_backbone, self.device, self.fixed = model.to(device).eval(), to_backbone, device, fixed_targets
        self.captured: dict[str, torch.Tensor] = {}
        for key, node in taps.items():
            self.model.get_submodule(node).register_forward_hook(
                lambda m, i, o, key=key: self.captured.__setitem__(key, o))
        with torch.no_grad():
            self.model(torch.zeros(1, 3, 224, 224, device=device))
        torch.manual_seed(seed)
        self.decoder = SeedDecoder({k: tuple(v.shape[1:]) for k, v in self.captured.items()}).to(device)
        self.opt = torch.optim.Adam(self.decoder.parameters(), lr=1e-3)
        self.imagenet_norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """[0,1] images → the decoder's output (its range is whatever training taught it)."""
        with torch.no_grad():
            self.model(self.to_backbone(x))
        return self.decoder(dict(self.captured))

    def step(self, x: torch.Tensor) -> None:
        x = x.to(self.device)
        with torch.no_grad():
            self.model(self.to_backbone(x))
        target = x if self.fixed else self.imagenet_norm(x)
        loss = torch.nn.functional.mse_loss(self.decoder(dict(self.captured)), target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        loss.item()  # the original logged the loss every step

    def run(self, root: str, stop: Callable[[int], bool]) -> dict[str, int]:
        """Train on the ImageFolder ``root`` until ``stop(steps_done)``; returns steps, images, epochs."""
        import torchvision
        from torch.utils.data import DataLoader
        from torchvision import transforms

        tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
        loader = DataLoader(torchvision.datasets.ImageFolder(root, transform=tf), batch_size=8, shuffle=True, num_workers=0)
        steps = images = epochs = 0
        while not stop(steps):
            epochs += 1
            for x, _ in loader:
                self.step(x)
                steps, images = steps + 1, images + len(x)
                if stop(steps):
                    break
        return {"steps": steps, "images": images, "epochs": epochs}


def featinv_backbone(backbone: str, weights: str, device: torch.device, seed: int = 0) -> OriginalLoop:
    """The original loop on one of featinv's backbones (hooks at its stage taps)."""
    from torchvision import transforms

    from featinv.backbones import build_backbone, get_spec

    spec = get_spec(backbone)
    torch.manual_seed(seed)
    model, _ = build_backbone(backbone, weights, seed)
    return OriginalLoop(model, dict(spec.taps), transforms.Normalize(list(spec.mean), list(spec.std)), device, seed=seed)
