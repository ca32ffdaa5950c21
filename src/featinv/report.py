"""Figures and small files from values already computed; nothing here measures anything."""

from __future__ import annotations

import csv
import io
import textwrap
from pathlib import Path
from typing import Sequence

import torch

from .utils import atomic_write_bytes, atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _wrap(title: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_png(image: torch.Tensor, path: Path) -> None:
    """Write a uint8 3×H×W tensor as a PNG file."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def comparison_figure(
    originals: torch.Tensor, reconstructions: torch.Tensor, labels: Sequence[str], title: str, path: Path
) -> None:
    """Originals (top row) over reconstructions (bottom row), each labelled."""
    plt = _pyplot()
    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 5.0), squeeze=False)
    for i in range(n):
        for row, (imgs, name) in enumerate(((originals, "original"), (reconstructions, "reconstruction"))):
            ax = axes[row][i]
            ax.imshow(imgs[i].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(name)
        axes[1][i].set_xlabel(labels[i], fontsize=8)
    fig.suptitle(_wrap(title, max(40, 22 * n)), fontsize=9)
    _save_figure(fig, path)


def loss_curve(rows: Sequence[dict], title: str, path: Path) -> None:
    """Train loss and val MSE per epoch (log scale), val PSNR on a second axis."""
    plt = _pyplot()
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
    ax.set_title(_wrap(title, 80), fontsize=9)
    _save_figure(fig, path)


def write_skipped(rows: Sequence[tuple[str, str]], path: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "reason"])
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
