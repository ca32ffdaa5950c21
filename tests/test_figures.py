"""Figures stay readable with long titles and many columns: no title is drawn over an image."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from featinv import figures, report


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _titles_clear_of_images(fig) -> list[str]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    image_axes = [ax for ax in fig.axes if ax.images]
    texts = [fig._suptitle] if fig._suptitle is not None else []
    texts += [ax.title for ax in fig.axes if ax.get_title()]
    bad = []
    for t in texts:
        box = t.get_window_extent(renderer)
        for ax in image_axes:
            if _overlaps(box, ax.get_window_extent(renderer)):
                bad.append(f"{t.get_text()[:40]!r} over an image")
        for other in texts:
            if other is not t and _overlaps(box, other.get_window_extent(renderer)):
                bad.append(f"{t.get_text()[:40]!r} runs into {other.get_text()[:40]!r}")
    return bad


LONG_TITLE = ("efficientnet_lite0 (imagenet weights), stage1+stage2+stage3+stage4, ladder decoder — validation images of "
              "/home/someone/a/rather/long/path/to/the/data/folder/imagenet-sample/with/more/parts") * 2


def test_comparison_figure_keeps_a_long_title_above_the_images():
    assert len(LONG_TITLE) >= 200
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    fig = figures.comparison_fig(x, x, [f"{i} dB" for i in range(4)], LONG_TITLE)
    assert _titles_clear_of_images(fig) == []


@pytest.mark.parametrize("errors", [False, True], ids=["grid", "error_maps"])
def test_grid_with_six_configurations_keeps_titles_apart(tmp_path, errors):
    rng = np.random.default_rng(0)
    run_dirs, rows = [], []
    originals = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    for j in range(6):
        d = tmp_path / f"run{j}" / "results"
        d.mkdir(parents=True)
        for i, o in enumerate(originals):
            Image.fromarray(o).save(d / f"original_{i}.png")
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"reconstruction_{i}.png")
        with open(d / "per_image.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "mse", "psnr", "ssim"])
            w.writerows([[f"{i}.jpg", 0.01, 20.0 + i, 0.5] for i in range(3)])
        run_dirs.append(d.parent)
        rows.append({"backbone": "efficientnet_lite0", "weights": "imagenet", "layer_set": "stage1+stage2+stage3+stage4"})
    fig = report.grid_figure(run_dirs, rows, n=3, errors=errors)
    assert _titles_clear_of_images(fig) == []
