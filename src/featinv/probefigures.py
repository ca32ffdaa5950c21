"""The probes' figures (`featinv probe`): matplotlib figures from values already computed.

Each function returns a figure; :func:`featinv.figures.save_figure` writes it. Images are [0,1]
tensors (3×H×W, or H×W×3 for the feature pictures).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .figures import pyplot

LABELS = {"shift": "shift (pixels)", "flip": "horizontal flip", "scale": "zoom (factor)", "rotate": "rotation (degrees)",
          "hue": "hue shift (fraction of the circle)", "grayscale": "grayscale", "blur": "Gaussian blur σ (pixels)",
          "noise": "Gaussian noise σ ([0,1] pixels)", "jpeg": "JPEG quality"}


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().permute(1, 2, 0).clamp(0, 1).cpu().numpy()


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(rows: int, cols: int, size: float = 1.7):
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat:
        _bare(ax)
    return fig, axes


def invariance_grid(depth_names: Sequence[str], shown: dict, kinds: Sequence[tuple[str, float]], image: str):
    """Rows: no change, then each transform at its strongest; columns: the input, then each depth's
    reconstruction of it (``shown[(depth, kind)]``; ``shown[("input", kind)]`` is the input)."""
    rows = [("none", None), *kinds]
    fig, axes = _grid(len(rows), 1 + len(depth_names))
    for i, (kind, s) in enumerate(rows):
        axes[i][0].imshow(_hwc(shown[("input", kind)]))
        label = "no change" if kind == "none" else f"{kind} {s:g}" if kind not in ("flip", "grayscale") else kind
        axes[i][0].set_ylabel(label, fontsize=8)
        for j, d in enumerate(depth_names):
            axes[i][j + 1].imshow(_hwc(shown[(d, kind)]))
    axes[0][0].set_title("input", fontsize=8)
    for j, d in enumerate(depth_names):
        axes[0][j + 1].set_title(f"decoded from {d}", fontsize=8)
    fig.suptitle(f"Invariance: what each depth's decoder makes of a transformed input ({image})", fontsize=10)
    return fig


def _single_strength(ax, rows: Sequence[dict], kind: str, depth_names: Sequence[str], colors: Sequence[str]) -> None:
    """A transform with one strength (flip, grayscale): bars per depth; hatched, the aligned change."""
    for c, d in enumerate(depth_names):
        r = next(r for r in rows if r["depth"] == d and r["transform"] == kind)
        paired = r["aligned_change"] is not None
        ax.bar(c - 0.2 if paired else c, r["feature_change"], 0.4 if paired else 0.6, color=colors[c % len(colors)])
        if paired:
            ax.bar(c + 0.2, r["aligned_change"], 0.4, color=colors[c % len(colors)], alpha=0.5, hatch="//")
    ax.set_xticks(range(len(depth_names)), depth_names, fontsize=7)


def invariance_curves(rows: Sequence[dict], depth_names: Sequence[str]):
    """Feature change against strength, one panel per transform, a line per depth; dashed: the
    change left after moving the maps the same way (geometric transforms: equivariance)."""
    plt = pyplot()
    kinds = list(dict.fromkeys(r["transform"] for r in rows if r["transform"] != "identity"))
    cols = 3
    nrows = (len(kinds) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows + 0.8), squeeze=False, layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes.flat, kinds):
        if len({r["strength"] for r in rows if r["transform"] == kind}) == 1:
            _single_strength(ax, rows, kind, depth_names, colors)
        else:
            for c, d in enumerate(depth_names):
                rs = [r for r in rows if r["depth"] == d and r["transform"] == kind]
                xs = [r["strength"] for r in rs]
                ax.plot(xs, [r["feature_change"] for r in rs], "o-", color=colors[c % len(colors)], label=d)
                if rs and rs[0]["aligned_change"] is not None:
                    ax.plot(xs, [r["aligned_change"] for r in rs], "s--", color=colors[c % len(colors)], alpha=0.7)
            ax.set_xlabel(LABELS.get(kind, kind), fontsize=8)
        ax.set_title(LABELS.get(kind, kind), fontsize=9)
        ax.set_ylabel("relative feature change", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(kinds):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colors[c % len(colors)], marker="o", label=d) for c, d in enumerate(depth_names)]
    handles += [plt.Line2D([], [], color="gray", label="solid: ‖φ(Tx) − φ(x)‖² / ‖φ(x)‖² (invariance: low)"),
                plt.Line2D([], [], color="gray", ls="--", label="dashed, hatched: ‖φ(Tx) − Tφ(x)‖² / ‖φ(x)‖² "
                           "(maps moved too; equivariance: low)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(depth_names) + 2, fontsize=8)
    fig.suptitle("Invariance and equivariance: how far each transform moves the features, per depth", fontsize=11)
    return fig


def views_figure(image: torch.Tensor, views: Sequence[tuple], name: str):
    """Per tap: the image, its features' first three principal components as RGB, and the most
    energetic channels (each scaled to its own range)."""
    k = max((len(v[3]) for v in views), default=0)
    fig, axes = _grid(len(views), 2 + k, size=1.4)
    for i, (label, pca, idx, maps) in enumerate(views):
        axes[i][0].imshow(_hwc(image))
        axes[i][0].set_ylabel(label, fontsize=7)
        axes[i][1].imshow(pca.cpu().numpy(), interpolation="nearest")
        for j, (c, m) in enumerate(zip(idx, maps)):
            axes[i][2 + j].imshow(m.cpu().numpy(), cmap="viridis", interpolation="nearest")
            axes[i][2 + j].set_xlabel(f"channel {c}", fontsize=6)
    axes[0][0].set_title("image", fontsize=8)
    axes[0][1].set_title("3 principal\ncomponents as RGB", fontsize=8)
    if k:
        axes[0][2].set_title("most energetic channels →", fontsize=8, loc="left")
    fig.suptitle(f"Feature views of {name}", fontsize=10)
    return fig


def interpolation_figure(pictures: dict[str, list[torch.Tensor]], alphas: Sequence[float], a: str, b: str):
    """Rows: the pixel cross-fade, then each depth's decode of the blended features; columns: α."""
    names = list(pictures)
    fig, axes = _grid(len(names), len(alphas))
    for i, n in enumerate(names):
        for j, t in enumerate(pictures[n]):
            axes[i][j].imshow(_hwc(t))
        axes[i][0].set_ylabel("pixel cross-fade" if n == "pixels" else f"features of {n}", fontsize=8)
    for j, t in enumerate(alphas):
        axes[0][j].set_title(f"α = {t:g}", fontsize=8)
    fig.suptitle(f"Interpolation from {a} (α = 0) to {b} (α = 1): pixels or content?", fontsize=10)
    return fig


def ablation_curves(rows: Sequence[dict], depth_names: Sequence[str]):
    """PSNR against the share of channels zeroed, a colour per depth; solid: most energetic
    channels first, dashed: a random order (the control)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, d in enumerate(depth_names):
        for order, style in (("energy", "o-"), ("random", "s--")):
            rs = [r for r in rows if r["depth"] == d and r["order"] == order]
            ax.plot([100 * r["fraction"] for r in rs], [r["psnr"] for r in rs], style, color=colors[c % len(colors)],
                    label=f"{d}, {'most energetic first' if order == 'energy' else 'random order'}")
    ax.set_xlabel("channels zeroed in every tap (%)")
    ax.set_ylabel("PSNR against the image (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Ablation: how the reconstruction degrades as channels are removed", fontsize=10)
    return fig


def ablation_pictures(image: torch.Tensor, shown: dict, depth_names: Sequence[str], name: str):
    """Rows: depths; columns: the image, the plain reconstruction, and with half the channels
    zeroed (the most energetic half, a random half)."""
    fig, axes = _grid(len(depth_names), 4)
    titles = ["image", "all channels", "most energetic 50% zeroed", "random 50% zeroed"]
    for i, d in enumerate(depth_names):
        for j, t in enumerate([image, shown[(d, "none")], shown[(d, "energy")], shown[(d, "random")]]):
            axes[i][j].imshow(_hwc(t))
        axes[i][0].set_ylabel(d, fontsize=8)
    for j, t in enumerate(titles):
        axes[0][j].set_title(t, fontsize=8)
    fig.suptitle(f"Ablation at 50%: which channels carry what ({name})", fontsize=10)
    return fig


def metrics_gallery(x: torch.Tensor, names: Sequence[str], recon: dict[str, torch.Tensor],
                    gallery: dict[str, Sequence[dict]], correlation: dict[str, float]):
    """Per depth, the images on which PSNR and SSIM disagree most: the original over the
    reconstruction, with both scores and their ranks among the images (1 = worst)."""
    k = max((len(v) for v in gallery.values()), default=0)
    depths = list(gallery)
    fig, axes = _grid(2 * len(depths), max(k, 1))
    index = {n: i for i, n in enumerate(names)}
    for i, d in enumerate(depths):
        for j, r in enumerate(gallery[d]):
            top, bottom = axes[2 * i][j], axes[2 * i + 1][j]
            top.imshow(_hwc(x[index[r["image"]]]))
            top.set_title(r["image"], fontsize=7)
            bottom.imshow(_hwc(recon[d][index[r["image"]]]))
            bottom.set_xlabel(f"PSNR {r['psnr']:.1f} dB (rank {r['psnr_rank']})\nSSIM {r['ssim']:.3f} (rank {r['ssim_rank']})",
                              fontsize=7)
        axes[2 * i][0].set_ylabel("original", fontsize=8)
        axes[2 * i + 1][0].set_ylabel(f"{d}\nPSNR–SSIM ρ {correlation.get(d, float('nan')):+.2f}", fontsize=8)
    fig.suptitle("Metrics against the eye: where PSNR and SSIM rank the reconstructions differently\n"
                 f"(rank among the {len(names)} images, 1 = lowest score)", fontsize=10)
    return fig
