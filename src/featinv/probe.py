"""What the features encode, per depth (`featinv probe`, `featinv features`).

A *depth* is a trained decoder with its backbone: a run directory or a decoder that ships with
featinv. Five probes ask what each depth keeps and throws away:

- ``invariance``: how much the features change under a transform of the input (shift, flip, scale,
  rotation, hue, grayscale, blur, noise, JPEG), whether a geometric change moves the maps with it
  (equivariance), and whether the decoder shows the change (it is kept) or not (it is ignored);
- ``views``: each tap's channels as a picture (their first three principal components as RGB, the
  most energetic channels) and its statistics (share of zeros, effective rank);
- ``interpolate``: two images blended in feature space and decoded, beside the pixel cross-fade;
- ``ablate``: a growing share of each tap's channels zeroed (most energetic first, or at random);
- ``metrics``: how MSE, PSNR and SSIM rank the same reconstructions, and where PSNR and SSIM disagree.

Everything runs in float32 without gradients; random draws come from fixed seeds, so the same
command on the same photos writes the same CSV files.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.nn import functional as F

from . import figures
from . import metrics as M
from . import probefigures as PF
from .backbones import FeatureExtractor
from .config import PROBES
from .evaluate import Run, image_paths, load_run, read_images
from .images import preprocess
from .pretrained import shipped_decoders
from .rundir import write_csv
from .utils import FeatinvError, atomic_write_text, machine_class

log = logging.getLogger(__name__)

# Transforms and the strengths probed, weakest first. Geometric ones also act on feature maps.
TRANSFORMS: dict[str, tuple[float, ...]] = {
    "shift": (4, 8, 16, 32),  # pixels, to the right
    "flip": (1,),  # horizontal
    "scale": (1.1, 1.25, 1.5),  # zoom in by this factor
    "rotate": (5, 15, 30),  # degrees
    "hue": (0.05, 0.15, 0.3),  # fraction of the hue circle
    "grayscale": (1,),
    "blur": (1, 2, 4),  # Gaussian σ in pixels
    "noise": (0.02, 0.05, 0.1),  # Gaussian σ on [0,1] pixels
    "jpeg": (75, 30, 10),  # quality
}
GEOMETRIC = ("shift", "flip", "scale", "rotate")
UNITS = {"shift": "pixels", "flip": "", "scale": "zoom factor", "rotate": "degrees", "hue": "fraction of the circle",
         "grayscale": "", "blur": "σ (pixels)", "noise": "σ ([0,1] pixels)", "jpeg": "quality"}
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
SEED = 0


@dataclass
class Depth:
    """One decoder and the backbone it reads: ``features`` then ``decode`` reconstructs."""

    name: str
    run: Run

    @property
    def device(self) -> torch.device:
        return self.run.device

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {k: v.float().contiguous() for k, v in self.run.extractor(x.to(self.device)).items()}

    def decode(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.run.decoder(feats).float().clamp(0, 1).cpu()

    def strides(self) -> dict[str, int]:
        return self.run.extractor.strides(self.run.config.data.image_size)


def load_depths(runs: Sequence[Union[str, Path]] = (), shipped: bool = False, device: str = "auto") -> list[Depth]:
    """The depths to probe: run directories (or shipped names such as ``stage2``) and, with
    ``shipped``, every decoder that ships with featinv."""
    from .pretrained import run_or_shipped

    named = [(Path(r).name if Path(r).exists() else str(r), run_or_shipped(str(r))) for r in runs]
    if shipped:
        named += list(shipped_decoders().items())
    if not named:
        raise FeatinvError("give --runs RUN [RUN ...] or --shipped: the decoders to probe.")
    for name, path in named:
        if not (Path(path) / "decoder.json").is_file():
            raise FeatinvError(f"{path} holds no decoder (decoder.json); give a finished run directory.")
    return [Depth(name, load_run(path, device=device)) for name, path in named]


def load_images(paths: Sequence[Union[str, Path]], image_size: int = 224, resize: int = 256,
                max_images: Optional[int] = None) -> tuple[list[str], torch.Tensor]:
    """Image files and folders → (names, B×3×H×W [0,1] center crops), in a stable order."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FeatinvError(f"{missing[0]} does not exist; give image files or folders with --data.")
    files = image_paths(paths)[:max_images] if max_images else image_paths(paths)
    crops = [preprocess(img, image_size, resize, train=False) for _, img in read_images(files)]
    return [f.stem for f in files], torch.stack(crops).float().div(255.0)


# --- transforms ---------------------------------------------------------------------------------

def _affine(kind: str, s: float, size: int) -> torch.Tensor:
    """The 2×3 matrix of grid_sample (output → input, normalised coordinates) for a geometric
    transform; the same matrix moves a feature map of any size by the same fraction of the image."""
    if kind == "shift":  # content moves s pixels to the right: output(x) = input(x − s)
        return torch.tensor([[1.0, 0.0, -2.0 * s / size], [0.0, 1.0, 0.0]])
    if kind == "scale":
        return torch.tensor([[1.0 / s, 0.0, 0.0], [0.0, 1.0 / s, 0.0]])
    a = math.radians(s)
    return torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])


def warp(x: torch.Tensor, kind: str, s: float, size: int) -> torch.Tensor:
    """A geometric transform of images or feature maps (B×C×H×W), ``size`` being the image's side."""
    if kind == "flip":
        return x.flip(-1)
    theta = _affine(kind, s, size).to(x)[None].expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for t in figures.uint8_images(x):
        buf = io.BytesIO()
        Image.fromarray(t).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1))
    return torch.stack(out).float().div(255.0)


def transform(x: torch.Tensor, kind: str, s: float) -> torch.Tensor:
    """``kind`` at strength ``s`` applied to [0,1] images; the result stays in [0,1]."""
    import torchvision.transforms.functional as TF

    if kind == "identity":
        return x.clone()
    if kind in GEOMETRIC:
        return warp(x, kind, s, x.shape[-1]).clamp(0, 1)
    if kind == "hue":
        return TF.adjust_hue(x, s)
    if kind == "grayscale":
        return TF.rgb_to_grayscale(x, num_output_channels=3)
    if kind == "blur":
        k = 2 * math.ceil(3 * s) + 1
        return TF.gaussian_blur(x, [k, k], [float(s), float(s)])
    if kind == "noise":
        g = torch.Generator().manual_seed(SEED)
        return (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)
    if kind == "jpeg":
        return _jpeg(x, int(s))
    raise FeatinvError(f"unknown transform {kind!r}; transforms: {', '.join(TRANSFORMS)}.")


def relative_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per image, ‖a − b‖² / ‖b‖² averaged over the taps."""
    return M.mean_over_taps(M.feature_distance(a, b)).cpu()


# --- 1. invariance and equivariance -------------------------------------------------------------

def invariance_row(depth: Depth, x: torch.Tensor, fx: dict, rx: torch.Tensor, kind: str, s: float) -> tuple[dict, torch.Tensor]:
    """One depth, one transform: the feature change, the aligned change (geometric), and the
    decoder's PSNR against the transformed image (kept) and against its plain reconstruction (ignored)."""
    tx = transform(x, kind, s)
    ftx = depth.features(tx)
    rtx = depth.decode(ftx)
    row = {"depth": depth.name, "transform": kind, "strength": s,
           "feature_change": float(relative_change(ftx, fx).mean()), "aligned_change": None,
           "psnr_vs_transformed": float(M.psnr(rtx, tx).mean()), "psnr_vs_reconstruction": float(M.psnr(rtx, rx).mean())}
    if kind in GEOMETRIC or kind == "identity":
        moved = {k: warp(v, kind, s, x.shape[-1]) if kind != "identity" else v for k, v in fx.items()}
        row["aligned_change"] = float(relative_change(ftx, moved).mean())
    return row, rtx


def invariance(depths: Sequence[Depth], x: torch.Tensor, transforms: Optional[dict[str, Sequence[float]]] = None
               ) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Every depth under every transform and strength (plus the identity, which must change
    nothing). Returns the rows and, per (depth, transform), the first image's decode at the
    strongest strength (for the figure)."""
    transforms = TRANSFORMS if transforms is None else transforms
    rows, shown = [], {("input", "none"): x[0]}
    for kind, strengths in transforms.items():
        shown[("input", kind)] = transform(x[:1], kind, strengths[-1])[0]
    for depth in depths:
        fx = depth.features(x)
        rx = depth.decode(fx)
        shown[(depth.name, "none")] = rx[0]
        for kind, strengths in [("identity", (0,)), *transforms.items()]:
            for s in strengths:
                row, rtx = invariance_row(depth, x, fx, rx, kind, s)
                rows.append(row)
                shown[(depth.name, kind)] = rtx[0]
    return rows, shown


# --- 2. feature views ---------------------------------------------------------------------------

def effective_rank(f: torch.Tensor) -> float:
    """exp(entropy) of the channel covariance's normalised eigenvalues (Roy & Vetterli 2007):
    how many directions the channels really use. ``f``: B×C×H×W."""
    z = f.float().permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double()
    z = z - z.mean(0)
    ev = torch.linalg.eigvalsh(z.T @ z / max(1, len(z) - 1)).clamp_min(0)
    p = ev / ev.sum().clamp_min(1e-30)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def pca_rgb(f: torch.Tensor) -> torch.Tensor:
    """One map C×H×W → its first three principal components as an H×W×3 picture in [0,1]."""
    c, h, w = f.shape
    z = f.float().reshape(c, -1).T
    z = z - z.mean(0)
    _, _, v = torch.linalg.svd(z, full_matrices=False)
    k = min(3, v.shape[0])
    proj = z @ v[:k].T
    proj = torch.cat([proj, proj.new_zeros(len(proj), 3 - k)], 1) if k < 3 else proj
    lo, hi = proj.min(0).values, proj.max(0).values
    return ((proj - lo) / (hi - lo).clamp_min(1e-12)).reshape(h, w, 3)


def top_channels(f: torch.Tensor, k: int = 8) -> tuple[list[int], list[torch.Tensor]]:
    """The ``k`` channels of one map C×H×W with the most energy (mean square), each scaled to [0,1]."""
    energy = f.float().pow(2).mean((1, 2))
    idx = energy.argsort(descending=True)[:k].tolist()
    maps = []
    for i in idx:
        m = f[i].float()
        maps.append((m - m.min()) / (m.max() - m.min()).clamp_min(1e-12))
    return idx, maps


def tap_stats(name: str, tap: str, stride: int, f: torch.Tensor) -> dict[str, Any]:
    return {"depth": name, "tap": tap, "stride": stride, "channels": f.shape[1], "height": f.shape[2],
            "width": f.shape[3], "zero_share": float((f == 0).float().mean()),
            "effective_rank": effective_rank(f), "mean_energy": float(f.float().pow(2).mean())}


def feature_views(extractors: Sequence[tuple[str, FeatureExtractor]], x: torch.Tensor, k: int = 8
                  ) -> tuple[list[dict], list[tuple[str, torch.Tensor, list[int], list[torch.Tensor]]]]:
    """Per tap of each (name, extractor): statistics over all images, and for the first image its
    principal-component picture and ``k`` most energetic channels. Taps seen twice are shown once."""
    rows, views, seen = [], [], set()
    for name, fe in extractors:
        dev = next(fe.parameters()).device
        with torch.no_grad():
            feats = {t: v.float().cpu() for t, v in fe(x.to(dev)).items()}
        strides = fe.strides(x.shape[-1])
        for tap, f in feats.items():
            key = (fe.spec.name, fe.weights_info.get("sha256") or fe.weights_info.get("weights"), fe.nodes[tap])
            if key in seen:
                continue
            seen.add(key)
            rows.append(tap_stats(name, tap, strides[tap], f))
            idx, maps = top_channels(f[0], k)
            where = tap if name == tap else f"{name}: {tap}"
            views.append((f"{where}\nstride {strides[tap]}, {f.shape[1]}×{f.shape[2]}×{f.shape[3]}",
                          pca_rgb(f[0]), idx, maps))
    return rows, views


# --- 3. interpolation ---------------------------------------------------------------------------

def interpolate(depths: Sequence[Depth], a: torch.Tensor, b: torch.Tensor, alphas: Sequence[float] = ALPHAS
                ) -> tuple[list[dict], dict[str, list[torch.Tensor]]]:
    """Two images (3×H×W) blended in each depth's feature space, (1 − α)·φ(a) + α·φ(b), decoded;
    scored against the pixel cross-fade (1 − α)·a + α·b and against the two ends' reconstructions."""
    x = torch.stack([a, b])
    fades = [((1 - t) * a + t * b) for t in alphas]
    rows, pictures = [], {"pixels": fades}
    for depth in depths:
        f = depth.features(x)
        ends = depth.decode(f)
        pictures[depth.name] = []
        for t, fade in zip(alphas, fades):
            y = depth.decode({k: (1 - t) * v[:1] + t * v[1:] for k, v in f.items()})
            pictures[depth.name].append(y[0])
            rows.append({"depth": depth.name, "alpha": t, "psnr_vs_crossfade": float(M.psnr(y, fade[None])[0]),
                         "psnr_vs_a": float(M.psnr(y, ends[:1])[0]), "psnr_vs_b": float(M.psnr(y, ends[1:])[0])})
    return rows, pictures


# --- 4. ablation --------------------------------------------------------------------------------

def channel_order(f: torch.Tensor, order: str, seed: int = SEED) -> torch.Tensor:
    """Channel indices in the order they are zeroed: most energetic first, or a seeded permutation."""
    if order == "energy":
        return f.float().pow(2).mean((0, 2, 3)).argsort(descending=True)
    return torch.randperm(f.shape[1], generator=torch.Generator().manual_seed(seed))


def ablated(feats: dict[str, torch.Tensor], orders: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in feats.items():
        n = round(fraction * v.shape[1])
        keep = torch.ones(v.shape[1], device=v.device, dtype=v.dtype)
        keep[orders[k][:n].to(v.device)] = 0
        out[k] = v * keep[None, :, None, None]
    return out


def ablate(depths: Sequence[Depth], x: torch.Tensor, fractions: Sequence[float] = FRACTIONS
           ) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Zero a growing fraction of every tap's channels and decode: PSNR and SSIM against the
    image. Returns the rows and the first image's decode at 50% per (depth, order)."""
    rows, shown = [], {}
    for depth in depths:
        f = depth.features(x)
        plain = depth.decode(f)
        shown[(depth.name, "none")] = plain[0]
        for order in ("energy", "random"):
            orders = {k: channel_order(v, order) for k, v in f.items()}
            for frac in fractions:
                y = depth.decode(ablated(f, orders, frac))
                rows.append({"depth": depth.name, "order": order, "fraction": frac,
                             "psnr": float(M.psnr(y, x).mean()), "ssim": float(M.ssim(y, x).mean()),
                             "psnr_vs_reconstruction": float(M.psnr(y, plain).mean())})
                if frac == 0.5:
                    shown[(depth.name, order)] = y[0]
    return rows, shown


# --- 5. metrics against the eye -----------------------------------------------------------------

def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    v = np.asarray(values, dtype=np.float64)
    order = v.argsort(kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on the ranks); nan when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def rank_correlations(scores: dict[str, Sequence[float]]) -> list[dict]:
    """Every pair of metrics: Spearman's correlation over the images. MSE and LPIPS fall as
    fidelity rises, so a metric pair that agrees has +1 for PSNR–SSIM and −1 for MSE–SSIM."""
    names = list(scores)
    return [{"metric_a": a, "metric_b": b, "spearman": spearman(scores[a], scores[b])}
            for i, a in enumerate(names) for b in names[i + 1:]]


def lpips_metric(device: torch.device) -> tuple[Optional[Callable], str]:
    """LPIPS where the lpips package and its weights are present, else None and the reason."""
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        return None, "LPIPS skipped: the lpips package is not installed (pip install lpips; it fetches its weights)."
    try:
        import lpips

        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as e:  # noqa: BLE001 - offline weights, any failure: skip it with the reason
        return None, f"LPIPS skipped: its weights could not be loaded ({str(e).splitlines()[0][:120]})."

    def score(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net(y.to(device) * 2 - 1, x.to(device) * 2 - 1).flatten().cpu()

    return score, ""


def metrics_probe(depths: Sequence[Depth], x: torch.Tensor, names: Sequence[str]
                  ) -> tuple[list[dict], list[dict], dict[str, torch.Tensor], str]:
    """Per depth: every image's MSE, PSNR, SSIM (and LPIPS where present), and their rank
    correlations over the images. Returns (per-image rows, correlation rows, reconstructions, note)."""
    lp, note = lpips_metric(depths[0].device) if depths else (None, "")
    per_image, corr, recon = [], [], {}
    for depth in depths:
        y = depth.decode(depth.features(x))
        recon[depth.name] = y
        s = {k: v.tolist() for k, v in M.score(y, x).items()}
        if lp is not None:
            s["lpips"] = lp(y, x).tolist()
        per_image += [{"depth": depth.name, "image": n, **{k: s[k][i] for k in s}} for i, n in enumerate(names)]
        corr += [{"depth": depth.name, **c} for c in rank_correlations(s)]
    return per_image, corr, recon, note


def disagreements(per_image: Sequence[dict], depth: str, k: int = 3) -> list[dict]:
    """The ``k`` images of ``depth`` whose PSNR rank and SSIM rank differ most."""
    rows = [r for r in per_image if r["depth"] == depth]
    rp, rs = ranks([r["psnr"] for r in rows]), ranks([r["ssim"] for r in rows])
    gap = np.abs(rp - rs)
    order = sorted(range(len(rows)), key=lambda i: (-gap[i], i))[:k]
    return [{**rows[i], "psnr_rank": int(rp[i]), "ssim_rank": int(rs[i])} for i in order]


# --- writing ------------------------------------------------------------------------------------

def write_rows(rows: Sequence[dict], path: Path) -> None:
    """Rows as CSV (floats to 6 significant digits, so reruns write identical files)."""
    fmt = [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    write_csv(path, fmt, list(rows[0]) if rows else [])


def check_request(probes: Sequence[str], n_images: int) -> list[str]:
    """The probes asked for, in order and once each; one sentence for an unknown probe or too few images."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        raise FeatinvError(f"unknown probe {unknown[0]!r}; probes: {', '.join(PROBES)}.")
    if "interpolate" in probes and n_images < 2:
        raise FeatinvError("the interpolate probe needs at least two images; give more with --data.")
    return list(dict.fromkeys(probes))


def run_probes(depths: Sequence[Depth], names: Sequence[str], x: torch.Tensor, out: Union[str, Path],
               probes: Sequence[str] = PROBES) -> dict[str, Any]:
    """Run ``probes`` on the depths and images; write each probe's CSV and figures into ``out``
    and ``probe.json`` (what was probed, the files written). Returns probe.json's content."""
    probes = check_request(probes, len(x))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    notes: list[str] = []
    for probe in probes:
        log.info("probe %s: %d depth(s), %d image(s)", probe, len(depths), len(x))
        files[probe], note = PROBE_RUNNERS[probe](depths, names, x, out)
        if note:
            notes.append(note)
            log.info("%s", note)
    info = {"depths": [{"name": d.name, "run": str(d.run.path), "title": d.run.describe(), "strides": d.strides()}
                       for d in depths],
            "images": list(names), "probes": probes, "files": files, "notes": notes,
            "transforms": {k: list(v) for k, v in TRANSFORMS.items()}, "fractions": list(FRACTIONS),
            "alphas": list(ALPHAS), "seed": SEED, "machine": machine_class(depths[0].device) if depths else None,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}
    atomic_write_text(out / "probe.json", json.dumps(info, indent=2) + "\n")
    return info


def _run_invariance(depths, names, x, out):
    rows, shown = invariance(depths, x)
    write_rows(rows, out / "invariance.csv")
    strongest = [(k, v[-1]) for k, v in TRANSFORMS.items()]
    figures.save_figure(PF.invariance_grid([d.name for d in depths], shown, strongest, names[0]), out / "invariance.png")
    figures.save_figure(PF.invariance_curves(rows, [d.name for d in depths]), out / "invariance_curves.png")
    return ["invariance.csv", "invariance.png", "invariance_curves.png"], ""


def _run_views(depths, names, x, out):
    rows, views = feature_views([(d.name, d.run.extractor) for d in depths], x)
    write_rows(rows, out / "views.csv")
    figures.save_figure(PF.views_figure(x[0], views, names[0]), out / "views.png")
    return ["views.csv", "views.png"], ""


def _run_interpolate(depths, names, x, out):
    rows, pictures = interpolate(depths, x[0], x[1])
    write_rows(rows, out / "interpolation.csv")
    figures.save_figure(PF.interpolation_figure(pictures, ALPHAS, names[0], names[1]), out / "interpolation.png")
    return ["interpolation.csv", "interpolation.png"], ""


def _run_ablate(depths, names, x, out):
    rows, shown = ablate(depths, x)
    write_rows(rows, out / "ablation.csv")
    figures.save_figure(PF.ablation_curves(rows, [d.name for d in depths]), out / "ablation.png")
    figures.save_figure(PF.ablation_pictures(x[0], shown, [d.name for d in depths], names[0]), out / "ablation_50.png")
    return ["ablation.csv", "ablation.png", "ablation_50.png"], ""


def _run_metrics(depths, names, x, out):
    per_image, corr, recon, note = metrics_probe(depths, x, names)
    write_rows(per_image, out / "metrics_per_image.csv")
    write_rows(corr, out / "metrics.csv")
    gallery = {d.name: disagreements(per_image, d.name) for d in depths}
    rho = {r["depth"]: r["spearman"] for r in corr if (r["metric_a"], r["metric_b"]) == ("psnr", "ssim")}
    figures.save_figure(PF.metrics_gallery(x, names, recon, gallery, rho), out / "metrics_gallery.png")
    return ["metrics.csv", "metrics_per_image.csv", "metrics_gallery.png"], note


PROBE_RUNNERS = {"invariance": _run_invariance, "views": _run_views, "interpolate": _run_interpolate,
                 "ablate": _run_ablate, "metrics": _run_metrics}


def probe(runs: Sequence[Union[str, Path]] = (), shipped: bool = False, data: Sequence[Union[str, Path]] = (),
          out: Union[str, Path] = "probe", probes: Sequence[str] = PROBES, max_images: Optional[int] = 8,
          device: str = "auto") -> dict[str, Any]:
    """`featinv probe`: load the depths (``runs`` and/or the ``shipped`` decoders), the first
    ``max_images`` images of ``data`` (files or folders), run the probes, write into ``out``."""
    check_request(probes, 2)
    if not data:
        raise FeatinvError("give --data: image files or folders to probe.")
    names, x = load_images(data, max_images=max_images)  # the photos are checked before any model loads
    probes = check_request(probes, len(x))
    depths = load_depths(runs, shipped, device)
    sizes = {d.run.config.data.image_size for d in depths}
    if sizes != {x.shape[-1]}:
        raise FeatinvError(f"the decoders expect {', '.join(map(str, sorted(sizes)))}-pixel images; probe them one size at a time.")
    return run_probes(depths, names, x, out, probes)


def features(images: Sequence[Union[str, Path]], out: Union[str, Path], backbone: str = "resnet50",
             weights: str = "imagenet", layers: Optional[Sequence[str]] = None, device: str = "auto") -> list[dict]:
    """`featinv features`: the feature views of one backbone's taps for the given images (no decoder)."""
    from .backbones import get_spec
    from .utils import resolve_device

    names, x = load_images(images)
    fe = FeatureExtractor(backbone, weights, list(layers or get_spec(backbone).default_layers)).to(resolve_device(device)).eval()
    rows, views = feature_views([(f"{backbone} ({weights})", fe)], x)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "views.csv")
    figures.save_figure(PF.views_figure(x[0], views, names[0]), out / "views.png")
    return rows
