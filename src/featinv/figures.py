"""The PNG and CSV writers: figures and small files from values already computed.

Lower than :mod:`featinv.report` (the HTML page): train, evaluate and cache write through these.
"""

from __future__ import annotations

import csv
import io
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .utils import atomic_write_bytes, atomic_write_text


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def wrap(title: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


def figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG (atomically) and close it."""
    atomic_write_bytes(path, figure_bytes(fig))


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a uint8 3×H×W tensor as a PNG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def comparison_figure(
    originals: torch.Tensor, reconstructions: torch.Tensor, labels: Sequence[str], title: str, path: Path
) -> None:
    """Originals (top row) over reconstructions (bottom row), each labelled, saved to ``path``."""
    save_figure(comparison_fig(originals, reconstructions, labels, title), path)


def comparison_fig(originals: torch.Tensor, reconstructions: torch.Tensor, labels: Sequence[str], title: str):
    plt = pyplot()
    n = len(originals)
    # Constrained layout makes room for a title of any length above the images, never over them.
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5.0), squeeze=False, layout="constrained")
    for i in range(n):
        for row, (imgs, name) in enumerate(((originals, "original"), (reconstructions, "reconstruction"))):
            ax = axes[row][i]
            ax.imshow(imgs[i].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name)
        axes[1][i].set_xlabel(labels[i], fontsize=8)
    fig.suptitle(wrap(title, max(60, 34 * n)), fontsize=9)
    return fig


def loss_curve(rows: Sequence[dict], title: str, path: Path) -> None:
    """Train loss and val MSE per epoch (log scale), val PSNR on a second axis."""
    plt = pyplot()
    epochs = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train loss")
    ax.plot(epochs, [float(r["val_mse"]) for r in rows], "s-", label="val MSE")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss / MSE")
    ax2 = ax.twinx()
    ax2.plot(epochs, [float(r["val_psnr"]) for r in rows], "^--", color="tab:green", label="val PSNR")
    ax2.set_ylabel("val PSNR (dB)")
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title(wrap(title, 80), fontsize=9)
    save_figure(fig, path)


def write_skipped(rows: Sequence[tuple[str, str]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "reason"])
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def uint8_images(x: torch.Tensor) -> list[np.ndarray]:
    """B×3×H×W floats in [0,1] → H×W×3 uint8 arrays, as ``image_grid`` takes them."""
    return [(t.detach().float().permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy() for t in x]


def image_grid(
    originals: Sequence[np.ndarray],
    titles: Sequence[str],
    columns: Sequence[Sequence[np.ndarray]],
    labels: Sequence[Sequence[str]],
    suptitle: str,
    errors: bool = False,
):
    """Rows = images; the original, then one column per entry of ``columns`` (uint8 H×W×3 arrays,
    labelled below by ``labels``), titled by ``titles``; with ``errors``, per-pixel |error| maps."""
    plt = pyplot()
    cols = 1 + len(columns)
    fig, axes = plt.subplots(len(originals), cols, figsize=(2.1 * cols, 2.2 * len(originals)), squeeze=False,
                             layout="constrained")
    image = None
    for i, x in enumerate(originals):
        axes[i][0].imshow(x)
        for j, title in enumerate(titles):
            ax = axes[i][j + 1]
            if errors:
                err = np.abs(columns[j][i].astype(np.float32) - x.astype(np.float32)).mean(-1) / 255.0
                image = ax.imshow(err, cmap="magma", vmin=0.0, vmax=0.5)
            else:
                ax.imshow(columns[j][i])
            ax.set_xlabel(labels[j][i], fontsize=7)
            if i == 0:
                # wrapped to the column's width, so neighbouring titles never run into each other
                ax.set_title(wrap(title, 24), fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("original", fontsize=8)
    if errors and image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="|error| (mean over RGB)")
    fig.suptitle(suptitle, fontsize=10)
    return fig


def load_png_tensor(path: Path) -> torch.Tensor:
    """A PNG file as a uint8 3×H×W tensor (RGB)."""
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
