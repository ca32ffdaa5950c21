"""`featinv probe` and `featinv features`: each probe's defining property, on the shipped decoders."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from featinv import probe as P
from featinv.cli import main

pytest.importorskip("efficientnet_lite_pytorch")  # the shipped decoders read EfficientNet-Lite0 (offline extra)


@pytest.fixture(scope="module")
def depths():
    return P.load_depths(["stage1", "stage4"], device="cpu")


@pytest.fixture(scope="module")
def photos(samples):
    names, x = P.load_images([samples / "val"])  # chelsea, coffee, rocket: colour photos
    return names, x


def test_the_identity_changes_nothing(depths, photos):
    _, x = photos
    rows, _ = P.invariance(depths, x[:2], transforms={})
    assert [r["transform"] for r in rows] == ["identity", "identity"]
    for r in rows:
        assert r["feature_change"] == 0 and r["aligned_change"] == 0
        assert r["psnr_vs_reconstruction"] == 100.0  # the decode of φ(x) itself (PSNR's cap)
    plain = depths[0].decode(depths[0].features(x[:2]))
    assert rows[0]["psnr_vs_transformed"] == pytest.approx(float(torch.stack([
        -10 * torch.log10(((plain[i] - x[i]) ** 2).mean()) for i in range(2)]).mean()), abs=1e-3)


def test_a_shift_by_one_stride_moves_stage1_with_the_image(depths, photos):
    """Stage 1 (stride 4) is close to equivariant for a 4-pixel shift: once its maps are moved by
    one cell, the change left is a small part of the unaligned change (measured: 0.03 against 1.0)."""
    _, x = photos
    rows, _ = P.invariance(depths[:1], x, transforms={"shift": (4,)})
    shift = next(r for r in rows if r["transform"] == "shift")
    assert shift["feature_change"] > 0.3
    assert shift["aligned_change"] < 0.1 * shift["feature_change"]
    # a shift by half a cell cannot be undone by moving the maps: the aligned change stays larger
    half, _ = P.invariance(depths[:1], x, transforms={"shift": (2,)})
    assert next(r for r in half if r["transform"] == "shift")["aligned_change"] > 2 * shift["aligned_change"]


def test_warping_maps_moves_them_by_whole_cells():
    m = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    moved = P.warp(m, "shift", 32, size=256)  # 32 of 256 pixels = one cell of an 8×8 map
    assert torch.allclose(moved[..., 1:], m[..., :-1], atol=1e-4)
    assert torch.equal(P.warp(m, "flip", 1, 256), m.flip(-1))


def test_interpolation_ends_are_the_two_reconstructions(depths, photos):
    _, x = photos
    rows, pictures = P.interpolate(depths, x[0], x[1])
    for d in depths:
        ends = d.decode(d.features(x[:2]))
        # equal up to float rounding (one image decoded alone, the ends as a batch of two)
        assert torch.allclose(pictures[d.name][0], ends[0], atol=1e-4)
        assert torch.allclose(pictures[d.name][-1], ends[1], atol=1e-4)
        mine = {r["alpha"]: r for r in rows if r["depth"] == d.name}
        assert mine[0.0]["psnr_vs_a"] > 70 and mine[1.0]["psnr_vs_b"] > 70
        assert mine[0.5]["psnr_vs_a"] < 40 and mine[0.5]["psnr_vs_b"] < 40
    assert torch.allclose(pictures["pixels"][2], (x[0] + x[1]) / 2)


def test_ablating_nothing_is_the_reconstruction_and_everything_is_the_response_to_zeros(depths, photos):
    _, x = photos
    rows, _ = P.ablate(depths, x[:2], fractions=(0.0, 1.0))
    for d in depths:
        f = d.features(x[:2])
        zeros = d.decode({k: torch.zeros_like(v) for k, v in f.items()})
        for order in ("energy", "random"):
            none, everything = (next(r for r in rows if r["depth"] == d.name and r["order"] == order and r["fraction"] == q)
                                for q in (0.0, 1.0))
            assert none["psnr_vs_reconstruction"] == 100.0
            from featinv import metrics as M

            assert everything["psnr"] == pytest.approx(float(M.psnr(zeros, x[:2]).mean()), abs=1e-4)


def test_energy_order_zeroes_the_most_energetic_channels_first():
    f = torch.zeros(2, 4, 3, 3)
    f[:, 2] = 5.0
    f[:, 0] = 1.0
    assert P.channel_order(f, "energy")[:2].tolist() == [2, 0]
    assert sorted(P.channel_order(f, "random").tolist()) == [0, 1, 2, 3]


def test_rank_correlations_on_a_set_where_psnr_and_ssim_disagree():
    """Brightness offsets lower PSNR and keep structure (SSIM high); noise keeps PSNR and breaks
    structure. With offsets shrinking as noise grows, PSNR rises while SSIM falls: ρ = −1."""
    from featinv import metrics as M

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=g).mul(0.5).add(0.25)
    x = torch.nn.functional.avg_pool2d(x, 5, 1, 2)  # some structure for SSIM to keep
    pairs = []
    for offset, noise in ((0.20, 0.0), (0.10, 0.02), (0.05, 0.04), (0.0, 0.06)):
        pairs.append((x + offset + noise * torch.randn(x.shape, generator=g)).clamp(0, 1))
    y, xs = torch.cat(pairs), x.expand(4, -1, -1, -1)
    s = {k: v.tolist() for k, v in M.score(y, xs).items()}
    assert s["psnr"] == sorted(s["psnr"]) and s["ssim"] == sorted(s["ssim"], reverse=True)  # built to disagree
    table = {(r["metric_a"], r["metric_b"]): r["spearman"] for r in P.rank_correlations(s)}
    assert table[("mse", "psnr")] == pytest.approx(-1.0)
    assert table[("psnr", "ssim")] == pytest.approx(-1.0) and table[("mse", "ssim")] == pytest.approx(1.0)
    assert P.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share their rank
    assert math.isnan(P.spearman([1, 1, 1], [1, 2, 3]))


def test_effective_rank_counts_the_directions_used():
    g = torch.Generator().manual_seed(0)
    two = torch.randn(4, 2, 8, 8, generator=g)
    f = torch.cat([two, two[:, :1] * 2, torch.zeros(4, 5, 8, 8)], 1)  # 8 channels spanning 2 directions
    assert 1.0 < P.effective_rank(f) <= 2.0 + 1e-6
    assert P.effective_rank(torch.randn(64, 6, 8, 8, generator=g)) > 5.5


def _read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def probed(samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "p"
    argv = ["-q", "probe", "--runs", "stage1", "stage4", "--data", str(samples / "val"), "--out", str(out),
            "--device", "cpu"]
    assert main(argv) == 0
    return out, argv


def test_every_probe_writes_its_csv_and_figures(probed):
    out, _ = probed
    columns = {
        "invariance.csv": ["depth", "transform", "strength", "feature_change", "aligned_change",
                           "psnr_vs_transformed", "psnr_vs_reconstruction"],
        "views.csv": ["depth", "tap", "stride", "channels", "height", "width", "zero_share", "effective_rank",
                      "mean_energy"],
        "interpolation.csv": ["depth", "alpha", "psnr_vs_crossfade", "psnr_vs_a", "psnr_vs_b"],
        "ablation.csv": ["depth", "order", "fraction", "psnr", "ssim", "psnr_vs_reconstruction"],
        "metrics.csv": ["depth", "metric_a", "metric_b", "spearman"],
        "metrics_per_image.csv": ["depth", "image", "mse", "psnr", "ssim"],
    }
    for name, cols in columns.items():
        rows = _read(out / name)
        assert rows and list(rows[0]) == cols, name
    views = _read(out / "views.csv")
    assert [(r["tap"], r["stride"]) for r in views] == [("stage1", "4"), ("stage4", "32")]
    for png in ("invariance.png", "invariance_curves.png", "views.png", "interpolation.png", "ablation.png",
                "ablation_50.png", "metrics_gallery.png"):
        assert (out / png).stat().st_size > 20_000, png
    import json

    info = json.loads((out / "probe.json").read_text())
    assert [d["name"] for d in info["depths"]] == ["stage1", "stage4"] and len(info["images"]) == 3
    assert any("LPIPS" in n for n in info["notes"]) or "lpips" in _read(out / "metrics_per_image.csv")[0]


def test_the_same_command_writes_the_same_csvs(probed, tmp_path):
    out, argv = probed
    again = tmp_path / "again"
    assert main([*argv[:-3], str(again), "--device", "cpu", "--probes", "invariance", "ablate", "metrics"]) == 0
    for name in ("invariance.csv", "ablation.csv", "metrics.csv", "metrics_per_image.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_the_report_shows_the_probes(probed, tmp_path, capsys):
    out, _ = probed
    page = tmp_path / "r.html"
    assert main(["report", str(out), "--out", str(page)]) == 0
    text = page.read_text()
    assert 'id="probes"' in text and "What the features encode" in text
    for heading in ("Invariance and equivariance", "Feature views", "Interpolation", "Ablation", "Metrics against the eye"):
        assert f"<h3>{heading}</h3>" in text
    assert text.count("<img") == 7
    assert "(1 probe folder)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--shipped", "--probes", "invariance", "colour"], "unknown probe 'colour'"),
    (["--runs", "RUNLESS"], "holds no decoder"),
    (["--shipped", "--probes", "interpolate", "--max-images", "1"], "needs at least two images"),
    (["--shipped", "--data", "/nonexistent/photos"], "does not exist"),
])
def test_mistakes_are_one_sentence_and_exit_2(argv, message, samples, tmp_path, capsys):
    argv = [a if a != "RUNLESS" else str(tmp_path / "runless") for a in argv]
    (tmp_path / "runless").mkdir()
    data = [] if "--data" in argv else ["--data", str(samples / "val")]
    code = main(["probe", *data, *argv, "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]


def test_features_shows_a_backbones_taps_without_a_decoder(samples, tmp_path):
    out = tmp_path / "f"
    assert main(["-q", "features", str(samples / "val" / "coffee.jpg"), "--backbone", "resnet18", "--weights", "random",
                 "--layers", "layer1", "layer3", "--out", str(out), "--device", "cpu"]) == 0
    rows = _read(out / "views.csv")
    assert [(r["tap"], r["channels"], r["height"]) for r in rows] == [("layer1", "64", "56"), ("layer3", "256", "14")]
    assert all(0 <= float(r["zero_share"]) <= 1 and 1 <= float(r["effective_rank"]) <= int(r["channels"]) for r in rows)
    assert (out / "views.png").stat().st_size > 20_000
