"""The report: run directories → table rows, study figures and the HTML page; nothing here measures anything."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .figures import figure_bytes, image_grid, pyplot
from .rundir import RunDir, read_csv
from .utils import FeatinvError, atomic_write_bytes, atomic_write_text


# ── run directories → table rows ──────────────────────────────────────────────────────────────


def _layer_set_label(backbone: str, layers: Sequence[str]) -> str:
    """Layers named by stage (stage1..stage4, or `all`), whatever spelling the run used."""
    from .backbones import STAGES, get_spec

    spec = get_spec(backbone)
    stages = [spec.stage_of(layer) or layer for layer in layers]
    return "all" if sorted(stages) == list(STAGES) else "+".join(stages)


def run_row(run_dir: Path) -> dict[str, Any]:
    """One table row from a finished run directory (its summary, per-image scores, semantics),
    or from an inversion's folder (see :func:`inversion_row`)."""
    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    inversion = rd.read_inversion()
    if inversion is not None and not rd.summary_path.is_file():
        return inversion_row(run_dir, inversion)
    if not rd.completed():
        raise FeatinvError(f"{run_dir} is not a finished featinv run (no completed summary.json).")
    s = rd.read_summary()
    row = _scores(run_dir, s["backbone"]["backbone"], s["backbone"]["weights"], s["layers"], s["strides"],
                  s["val_images"], s["val"])
    fit = s.get("train_eval") or {}
    row.update(
        parameters=s["decoder_parameters"],
        epochs=s.get("epochs_run", s["epochs"]),
        converged=s.get("converged"),
        stop_reason=s.get("stop_reason"),
        train_minutes=round(s.get("train_pass_s", s["train_time_s"]) / 60, 2),
        images_per_s=s.get("train_images_per_s"),
        train_psnr=fit.get("psnr"),
        train_ssim=fit.get("ssim"),
        train_time_s=s["train_time_s"],
        **_reference_cells(s["reference"], row["stride"]),
    )
    row.update(_semantic_cells(rd.read_semantics() or {}))
    fe = rd.read_feature_error() or {}
    row.update(method="decoder", feature_error=fe.get("feature_error"), seconds_per_image=fe.get("seconds_per_image"))
    return row


def inversion_row(run_dir: Path, m: dict[str, Any]) -> dict[str, Any]:
    """A table row from an inversion's metrics.json and per_image.csv; the training columns are
    None, the reference lines those the sweep copied from the decoder run of the same layers."""
    row = _scores(Path(run_dir), m["backbone"], m["weights"], m["layers"], m["strides"], m["n_images"], m)
    row.update(dict.fromkeys(("parameters", "epochs", "converged", "stop_reason", "train_minutes", "images_per_s",
                              "train_psnr", "train_ssim", "train_time_s")))
    row.update(
        **_reference_cells(m.get("reference") or {}, row["stride"]),
        **_semantic_cells(m),
        method=m["method"], feature_error=m["feature_error_mean"], seconds_per_image=m["seconds_per_image"],
    )
    return row


def _scores(run_dir: Path, backbone: str, weights: str, layers: Sequence[str], strides: dict[str, int],
            n_images: int, means: dict[str, float]) -> dict[str, Any]:
    """A row's first cells: what was inverted, and MSE/PSNR/SSIM (the saved means, the spread
    over the per-image scores)."""
    per = RunDir(run_dir).read_per_image()
    row: dict[str, Any] = {
        "name": run_dir.name,
        "backbone": backbone,
        "weights": weights,
        "layer_set": _layer_set_label(backbone, layers),
        "layers": "+".join(layers),
        "stride": min(strides.values()),
        "n_images": n_images,
    }
    for k in ("mse", "psnr", "ssim"):
        values = [float(r[k]) for r in per]
        row[k] = means[k]
        row[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return row


SEMANTIC_FIELDS = ("feature_cosine", "top1_agreement", "top5_agreement", "judge", "judge_top1_agreement",
                   "judge_top5_agreement", "fd_judge")


def _semantic_cells(d: dict[str, Any]) -> dict[str, Any]:
    """A row's semantic cells from semantic.json (or an inversion's metrics.json), with the judge's
    top-1 agreement and fd_judge of the thumbnail and mean-image lines (None where not measured)."""
    cells = {k: d.get(k) for k in SEMANTIC_FIELDS}
    reference = d.get("reference") if isinstance(d.get("reference"), dict) else d.get("semantic_reference") or {}
    thumbnail = next((v for k, v in reference.items() if k.startswith("bicubic")), {})
    mean_img = reference.get("mean_image", {})
    for name, line in (("bicubic", thumbnail), ("mean_image", mean_img)):
        cells[f"ref_{name}_judge_top1"] = line.get("judge_top1_agreement")
        cells[f"ref_{name}_fd_judge"] = line.get("fd_judge")
    return cells


def _reference_cells(reference: dict[str, Any], stride: int) -> dict[str, Any]:
    """The mean-image and bicubic-thumbnail lines of a row (None where not measured)."""
    bicubic = next((v for k, v in reference.items() if k.startswith("bicubic")), {})
    mean_img = reference.get("mean_image", {})
    return {"ref_mean_image_psnr": mean_img.get("psnr"), "ref_mean_image_ssim": mean_img.get("ssim"),
            "ref_bicubic": f"x{stride}", "ref_bicubic_psnr": bicubic.get("psnr"), "ref_bicubic_ssim": bicubic.get("ssim")}


def expand_report_paths(paths: Sequence[Path]) -> list[Path]:
    """Run directories, and sweep directories (their runs, in the sweep's order)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if (p / "sweep.json").is_file():
            runs += [p / "runs" / name for name in json.loads((p / "sweep.json").read_text())["runs"]]
        elif RunDir(p).summary_path.is_file() or RunDir(p).has_config() or RunDir(p).read_inversion() is not None:
            runs.append(p)
        else:
            raise FeatinvError(f"{p} is neither a featinv run, an inversion, a sweep nor a probe directory.")
    return runs


# ── tables ────────────────────────────────────────────────────────────────────────────────────

TABLE_FIELDS = [
    "name", "backbone", "weights", "layer_set", "layers", "stride", "n_images",
    "mse", "mse_std", "psnr", "psnr_std", "ssim", "ssim_std", "train_psnr", "train_ssim",
    "parameters", "epochs", "converged", "stop_reason", "train_minutes", "images_per_s", "train_time_s",
    "ref_mean_image_psnr", "ref_mean_image_ssim", "ref_bicubic", "ref_bicubic_psnr", "ref_bicubic_ssim",
    "top1_agreement", "top5_agreement", "method", "feature_error", "seconds_per_image",
    "feature_cosine", "judge", "judge_top1_agreement", "judge_top5_agreement", "fd_judge",
    "ref_bicubic_judge_top1", "ref_bicubic_fd_judge", "ref_mean_image_judge_top1", "ref_mean_image_fd_judge",
]
TABLE_HEAD = ["configuration", "layers", "stride", "PSNR (dB)", "SSIM", "MSE", "train photos PSNR / SSIM",
              "converged", "epochs", "parameters", "training passes (wall time incl. validation)",
              "mean image PSNR / SSIM", "bicubic thumbnail PSNR / SSIM", "the backbone's own top-1 / top-5 agreement",
              "judge top-1 / top-5 agreement (thumbnail top-1)", "fd_judge (thumbnail, mean image)"]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


METHOD_HEAD = ["method", "feature error", "s/image"]


def _model_label(r: dict[str, Any]) -> str:
    return f"{r['backbone']} ({r['weights']})"


def _decoder(r: dict[str, Any]) -> bool:
    return r.get("method", "decoder") == "decoder"


def _with_methods(rows: Sequence[dict[str, Any]]) -> bool:
    """Tables get the method columns when a row is an inversion."""
    return not all(_decoder(r) for r in rows)


def table_head(rows: Sequence[dict[str, Any]]) -> list[str]:
    return TABLE_HEAD[:3] + METHOD_HEAD + TABLE_HEAD[3:] if _with_methods(rows) else TABLE_HEAD


def table_cells(r: dict[str, Any], methods: bool = False) -> list[str]:
    """The human-readable cells of one row, shared by the Markdown table and the HTML page;
    ``methods``: with the method, feature error and seconds per image."""
    if _decoder(r):
        training = [f"{_fmt(r['train_psnr'], 2)} / {_fmt(r['train_ssim'])}", _converged(r), str(r["epochs"]),
                    f"{r['parameters'] / 1e6:.2f}M", f"{r['train_minutes']:.1f} min ({r['train_time_s']:.0f} s)"]
    else:
        training = ["—", "— (no training)", "—", "—", "—"]
    method = [r["method"], _fmt(r.get("feature_error"), 4), _fmt(r.get("seconds_per_image"), 2)] if methods else []
    return [
        _model_label(r), r["layer_set"], str(r["stride"]), *method,
        f"{r['psnr']:.2f} ± {r['psnr_std']:.2f}", f"{r['ssim']:.3f} ± {r['ssim_std']:.3f}", f"{r['mse']:.5f}",
        *training,
        f"{_fmt(r['ref_mean_image_psnr'], 2)} / {_fmt(r['ref_mean_image_ssim'])}",
        f"{r['ref_bicubic']}: {_fmt(r['ref_bicubic_psnr'], 2)} / {_fmt(r['ref_bicubic_ssim'])}",
        _agreement(r),
        _agreement(r, "judge_"),
        _fd(r),
    ]


def _agreement(r: dict[str, Any], prefix: str = "") -> str:
    if r.get(f"{prefix}top1_agreement") is not None:
        text = f"{r[f'{prefix}top1_agreement']:.2f} / {r[f'{prefix}top5_agreement']:.2f}"
        if prefix and r.get("ref_bicubic_judge_top1") is not None:
            text += f" ({r['ref_bicubic_judge_top1']:.2f})"
        return text
    # say why there is no number: random weights have no classes to agree on
    return "n/a (random weights)" if r["weights"] == "random" else "not computed"


def _fd(r: dict[str, Any]) -> str:
    if r.get("fd_judge") is None:
        return "—" if r.get("judge") is None else "— (under 50 images)"
    return f"{r['fd_judge']:.1f} ({_fmt(r.get('ref_bicubic_fd_judge'), 1)}, {_fmt(r.get('ref_mean_image_fd_judge'), 1)})"


def _pct(v: Optional[float]) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def _converged(r: dict[str, Any]) -> str:
    """yes / NO (why it stopped) / not checked (a schedule without the plateau rule)."""
    if r["converged"] is None:
        return "not checked"
    return "yes" if r["converged"] else f"NO ({r['stop_reason']})"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    head, methods = table_head(rows), _with_methods(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(table_cells(r, methods)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(rows: Sequence[dict[str, Any]], out: Path) -> None:
    """``summary.csv``, ``summary.md`` and ``summary.json`` in ``out``."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if r[k] is None else r[k]) for k in TABLE_FIELDS} for r in rows])
    atomic_write_text(out / "summary.csv", buf.getvalue())
    atomic_write_text(out / "summary.md", markdown_table(rows))
    atomic_write_text(out / "summary.json", json.dumps(list(rows), indent=2) + "\n")


# ── figures ───────────────────────────────────────────────────────────────────────────────────


def metrics_vs_depth_figure(rows: Sequence[dict[str, Any]]):
    """PSNR and SSIM per layer set, a line per backbone/weights, reference lines drawn in."""
    plt = pyplot()
    sets = list(dict.fromkeys(r["layer_set"] for r in rows))
    stride_of = {r["layer_set"]: r["stride"] for r in rows}
    xs = {s: i for i, s in enumerate(sets)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, unit in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        for label in dict.fromkeys(_line_label(r) for r in rows):
            rs = [r for r in rows if _line_label(r) == label]
            ax.errorbar([xs[r["layer_set"]] for r in rs], [r[metric] for r in rs],
                        yerr=[r[f"{metric}_std"] for r in rs], marker="o", capsize=3, label=label)
        ref = {r["layer_set"]: r[f"ref_bicubic_{metric}"] for r in rows if r[f"ref_bicubic_{metric}"] is not None}
        if ref:
            ax.plot([xs[s] for s in ref], list(ref.values()), "k--", marker="x", alpha=0.6,
                    label="bicubic thumbnail at the layer's stride")
        means = [r[f"ref_mean_image_{metric}"] for r in rows if r[f"ref_mean_image_{metric}"] is not None]
        if means:
            ax.axhline(sum(means) / len(means), color="grey", linestyle=":", label="mean training image")
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels([f"{s}\n(stride {stride_of[s]})" for s in sets])
        ax.set_ylabel(unit)
        ax.set_xlabel("layers decoded (finest stride)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("What each depth keeps: validation metrics (mean ± std over images)", fontsize=10)
    return fig


def _line_label(r: dict[str, Any]) -> str:
    return _model_label(r) + ("" if _decoder(r) else f" — {r['method']}")


def learning_curves_figure(run_dirs: Sequence[Path], rows: Sequence[dict[str, Any]]):
    """Val PSNR per epoch, one line per configuration, whether it converged in the legend, so a
    reader sees which decoders had stopped improving (inversions train nothing: no line)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for d, r in zip(run_dirs, rows):
        if not _decoder(r):
            continue
        metrics = RunDir(d).read_metrics()
        label = f"{_model_label(r)} {r['layer_set']} (converged: {_converged(r)})"
        ax.plot([int(m["epoch"]) for m in metrics], [float(m["val_psnr"]) for m in metrics], "o-", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    ax.set_title("Learning curves: validation PSNR per epoch", fontsize=10)
    return fig


def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _pairs(run_dirs: Sequence[Path], n: int) -> tuple[list[np.ndarray], list[list[np.ndarray]], list[list[str]]]:
    """Originals from the first run; every run's reconstructions and per-image labels."""
    first = RunDir(run_dirs[0]).results
    k = 0
    while k < n and all((RunDir(d).results / f"reconstruction_{k}.png").is_file() for d in run_dirs):
        k += 1
    originals = [_load_png(first / f"original_{i}.png") for i in range(k)]
    for d in run_dirs[1:]:
        if any((RunDir(d).results / f"original_{i}.png").read_bytes() != (first / f"original_{i}.png").read_bytes()
               for i in range(k)):
            raise FeatinvError(
                f"{d} and {run_dirs[0]} were scored on different held-out images; the grid needs runs with the "
                "same data and split (report them separately)."
            )
    recons, labels = [], []
    for d in run_dirs:
        per = RunDir(d).read_per_image()
        recons.append([_load_png(RunDir(d).results / f"reconstruction_{i}.png") for i in range(k)])
        labels.append([f"{float(per[i]['psnr']):.1f} dB / {float(per[i]['ssim']):.2f}" for i in range(k)])
    return originals, recons, labels


def grid_figure(run_dirs: Sequence[Path], rows: Sequence[dict[str, Any]], n: int = 4, errors: bool = False):
    """Rows = held-out images; columns = the original, then each configuration's reconstruction
    (or, with ``errors``, its per-pixel absolute error averaged over RGB)."""
    originals, recons, labels = _pairs(run_dirs, n)
    if not originals:
        raise FeatinvError(f"{run_dirs[0]} has no saved pairs (results/original_0.png); train with --num-save > 0.")
    titles = [f"{_model_label(r)}\n{r['layer_set']}" + ("" if _decoder(r) else f" · {r['method']}") for r in rows]
    suptitle = "per-pixel absolute error" if errors else "held-out images and their reconstructions (PSNR / SSIM)"
    return image_grid(originals, titles, recons, labels, suptitle, errors=errors)


# ── the HTML report ───────────────────────────────────────────────────────────────────────────


def _paragraph(r: dict[str, Any]) -> str:
    what = "" if _decoder(r) else f", {html.escape(r['method'])}"
    text = (
        f"<b>{html.escape(_model_label(r))}, {html.escape(r['layer_set'])}{what}</b> (layers {html.escape(r['layers'])}, "
        f"finest stride {r['stride']}): PSNR {r['psnr']:.2f} ± {r['psnr_std']:.2f} dB, "
        f"SSIM {r['ssim']:.3f} ± {r['ssim_std']:.3f}, MSE {r['mse']:.5f} over {r['n_images']} held-out images"
    )
    if r["ref_bicubic_psnr"] is not None:
        diff = r["psnr"] - r["ref_bicubic_psnr"]
        text += (f"; {abs(diff):.2f} dB {'above' if diff >= 0 else 'below'} the bicubic {r['ref_bicubic']} "
                 f"thumbnail ({r['ref_bicubic_psnr']:.2f} dB)")
    if r["ref_mean_image_psnr"] is not None:
        text += f" and {r['psnr'] - r['ref_mean_image_psnr']:+.2f} dB against the mean training image"
    if r.get("judge_top1_agreement") is not None:
        text += (f". An independent judge, {html.escape(str(r['judge']))}, gives the reconstruction the original's "
                 f"top-1 class for {100 * r['judge_top1_agreement']:.0f}% of images (the thumbnail: "
                 f"{_pct(r.get('ref_bicubic_judge_top1'))}); the original's class is in its top 5 for "
                 f"{100 * r['judge_top5_agreement']:.0f}%")
        if r.get("fd_judge") is not None:
            text += f"; Fréchet distance in its pooled features {r['fd_judge']:.1f}"
    if r["top1_agreement"] is not None:
        text += (f". The backbone's own classifier (easier to please: the decoder learnt from its features) "
                 f"agrees on {100 * r['top1_agreement']:.0f}% (top 5: {100 * r['top5_agreement']:.0f}%)")
    if r["train_psnr"] is not None:
        text += (f". On as many training photos (center crops) it scores {r['train_psnr']:.2f} dB / "
                 f"{r['train_ssim']:.3f}: a gap of {r['train_psnr'] - r['psnr']:+.2f} dB")
    if r.get("feature_error") is not None:
        text += (f". Feature error ‖φ(x̂) − φ(x)‖² / ‖φ(x)‖² {r['feature_error']:.4f}, "
                 f"{r['seconds_per_image']:.2f} s per image")
    if not _decoder(r):
        return f"<p>{text}; found by optimisation on the pixels, no decoder trained.</p>"
    return (f"<p>{text}. Decoder: {r['parameters'] / 1e6:.2f}M parameters, {r['epochs']} epochs, "
            f"{r['train_time_s']:.0f} s of training; converged: {html.escape(_converged(r))}.</p>")


def _run_figures(run_dir: Path) -> str:
    """A run's own figures under its paragraph: its loss curve, its best and worst images."""
    html_parts = []
    for rel, alt in (("figures/loss_curve.png", "loss curve of"), ("results/best_worst.png", "best and worst images of")) \
            if RunDir(run_dir).read_inversion() is None else (("results/comparison.png", "results of"),):
        path = Path(run_dir) / rel
        if path.is_file():
            html_parts.append(_img(path.read_bytes(), f"{alt} {Path(run_dir).name}"))
    return "".join(html_parts)


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def validation_source(cfg: Any) -> str:
    """Where a run's validation images came from, in words."""
    d = cfg.data
    if d.val_data:
        return d.val_data
    if d.split_file:
        return f"the val rows of the split file {d.split_file}"
    return f"hash split of the training folder, fraction {d.val_fraction}"


def differing_settings(run_dirs: Sequence[Path]) -> dict[str, str]:
    """``{"settings that differ": ...}`` naming, run by run, every config key whose value is not
    the same in all runs (the backbone and layers aside: the table shows those); {} if none."""
    from .config import diff_configs

    configs = [RunDir(d).read_config().to_dict() for d in run_dirs]
    keys = sorted({k for c in configs[1:] for k in diff_configs(configs[0], c) + diff_configs(c, configs[0])}
                  - {("backbone", "name"), ("backbone", "weights"), ("backbone", "layers"), ("notes",)})
    if not keys:
        return {}

    def value(c: dict, key: tuple) -> Any:
        for part in key:
            c = c.get(part, {}) if isinstance(c, dict) else None
        return c

    lines = [f"{Path(d).name}: " + ", ".join(f"{'.'.join(k)}={value(c, k)}" for k in keys) for d, c in zip(run_dirs, configs)]
    return {"settings that differ between runs": "\n".join(lines)}


def _facts(run_dirs: Sequence[Path], rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """"What was run": data, models, recipe, time, software, and the settings that differ (from
    the trained runs; inversions add their methods and settings)."""
    trained = [d for d, r in zip(run_dirs, rows) if _decoder(r)]
    inversions = {r["method"]: RunDir(d).read_inversion()["settings"] for d, r in zip(run_dirs, rows) if not _decoder(r)}
    facts = {f"{m} (optimisation on the pixels)": ", ".join(f"{k} {v}" for k, v in st.items())
             for m, st in inversions.items()}
    if not trained:
        return {"backbones and weights": ", ".join(dict.fromkeys(_model_label(r) for r in rows)), **facts}
    return {**_training_facts(trained, [r for r in rows if _decoder(r)]), **facts}


def _training_facts(run_dirs: Sequence[Path], rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    from ._version import __version__

    cfg = RunDir(run_dirs[0]).read_config()
    first = RunDir(run_dirs[0]).read_summary()
    t = cfg.train
    budget = f"{t.minutes:g} min of training (at most {t.epochs} epochs)" if t.minutes else f"{t.epochs} epochs"
    facts = {
        "training data": cfg.data.data,
        "validation data": validation_source(cfg),
        "images (train / val)": f"{first['train_images']} / {first['val_images']}",
        "backbones and weights": ", ".join(dict.fromkeys(_model_label(r) for r in rows)),
        "decoder": f"{cfg.decoder.name} " + (", ".join(f"{k} {v}" for k, v in cfg.decoder.options().items()) or "(no options)"),
        "loss": " + ".join(f"{w:g}·{k}" for k, w in cfg.loss.__dict__.items() if isinstance(w, float) and w > 0),
        "budget per configuration": f"{budget}, batch {t.batch_size}, lr {t.lr}, {t.schedule} schedule, seed {t.seed}",
        "total training time": f"{sum(r['train_time_s'] for r in rows):.0f} s",
        "device": first.get("device", "?"),
        "software": f"featinv {__version__}, torch {first.get('torch_version', '?')}",
    }
    if cfg.notes:
        facts["notes"] = " ".join(cfg.notes)
    facts.update(differing_settings(run_dirs))
    return facts


PAGE_HEAD = ("<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}</style>")


def is_probe_dir(path: Path) -> bool:
    """A folder written by `featinv probe` (it holds probe.json)."""
    return (Path(path) / "probe.json").is_file()


def build_report(
    paths: Sequence[Path],
    out_html: Path,
    figures_dir: Optional[Path] = None,
    title: str = "featinv report",
    info: Optional[dict[str, str]] = None,
) -> list[dict[str, Any]]:
    """A self-contained HTML page (figures embedded) from run, sweep and probe directories.

    Returns the table rows of the runs. ``figures_dir`` also receives the study's figures as PNG files.
    """
    probes = [Path(p) for p in paths if is_probe_dir(p)]
    run_dirs = expand_report_paths([p for p in paths if not is_probe_dir(p)])
    if not run_dirs and not probes:
        raise FeatinvError("nothing to report: no run, sweep or probe directories given.")
    rows = [run_row(d) for d in run_dirs]
    body = _runs_section(run_dirs, rows, figures_dir, info) if run_dirs else _facts_table(info or {})
    for p in probes:
        body += probe_section(p)
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
            PAGE_HEAD + "</head><body>", f"<h1>{html.escape(title)}</h1>", *body, "</body></html>"]
    atomic_write_text(out_html, "\n".join(page) + "\n")
    return rows


def _facts_table(facts: dict[str, str]) -> list[str]:
    if not facts:
        return []
    return ["<h2>What was run</h2><table>",
            *[f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v)).replace(chr(10), '<br>')}</td></tr>"
              for k, v in facts.items()],
            "</table>"]


def _runs_section(run_dirs: Sequence[Path], rows: Sequence[dict[str, Any]], figures_dir: Optional[Path],
                  info: Optional[dict[str, str]]) -> list[str]:
    """What was run, the table, the study's figures and each run's paragraph."""
    figures = {
        "metrics_vs_depth": figure_bytes(metrics_vs_depth_figure(rows)),
        "learning_curves": figure_bytes(learning_curves_figure(run_dirs, rows)),
        "grid": figure_bytes(grid_figure(run_dirs, rows)),
        "error_maps": figure_bytes(grid_figure(run_dirs, rows, errors=True)),
    }
    if figures_dir is not None:
        for name, data in figures.items():
            atomic_write_bytes(Path(figures_dir) / f"{name}.png", data)
    facts = {**_facts(run_dirs, rows), **(info or {})}
    trained = [d for d, r in zip(run_dirs, rows) if _decoder(r)]
    commands = [RunDir(d).read_summary().get("command") for d in trained]
    if "command" not in facts and any(commands):
        facts["commands" if len(set(commands)) > 1 else "command"] = "\n".join(
            dict.fromkeys(f"{Path(d).name}: {c}" if len(set(commands)) > 1 else c for d, c in zip(trained, commands) if c))
    return [
        *_facts_table(facts),
        "<h2>Results</h2><table>",
        "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table_head(rows)) + "</tr>",
        *["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in table_cells(r, _with_methods(rows))) + "</tr>"
          for r in rows],
        "</table>",
        "<h2>Metrics against depth</h2>", _img(figures["metrics_vs_depth"], "PSNR and SSIM against depth"),
        "<h2>Learning curves</h2>",
        "<p>A depth comparison is fair only between decoders that have stopped improving: each line is one "
        "configuration's validation PSNR per epoch.</p>",
        _img(figures["learning_curves"], "learning curves: validation PSNR per epoch"),
        "<h2>Reconstructions</h2>", _img(figures["grid"], "held-out images and reconstructions"),
        "<h2>Where information is lost</h2>", _img(figures["error_maps"], "per-pixel error maps"),
        "<h2>Per configuration</h2>",
        "<p>Each run's own figures: train loss and val MSE (log scale) with val PSNR on the right axis; "
        "then its two best and two worst validation images by PSNR.</p>",
        *[_paragraph(r) + _run_figures(d) for r, d in zip(rows, run_dirs)],
    ]


# ── probe directories → the section "What the features encode" ───────────────────────────────

PROBE_TEXT = {
    "invariance": ("Invariance and equivariance",
                   "How far each transform of the input moves each depth's features (relative change; low: the depth "
                   "ignores it), the change left once the maps are moved the same way (geometric transforms; low: the "
                   "depth is equivariant), and what the decoder makes of the transformed input."),
    "views": ("Feature views", "Each tap's channels as pictures: the first three principal components as RGB and the "
              "most energetic channels; the share of zeros and the effective rank of the channel covariance."),
    "interpolate": ("Interpolation", "Two images blended in each depth's feature space and decoded, beside the pixel "
                    "cross-fade: a depth close to the cross-fade interpolates pixels, one far from it content."),
    "ablate": ("Ablation", "A growing share of every tap's channels zeroed, the most energetic first or in a random "
               "order (the control), and the PSNR of what the decoder makes of the rest."),
    "metrics": ("Metrics against the eye", "Rank correlation of MSE, PSNR and SSIM over the images, per depth, and "
                "the images on which PSNR and SSIM disagree most."),
}
PROBE_COLUMNS = {  # the CSV whose rows the section shows, the rows kept, and the columns
    "invariance": ("invariance.csv", lambda r, strongest: float(r["strength"]) == strongest.get(r["transform"], -1),
                   ["depth", "transform", "strength", "feature_change", "aligned_change", "psnr_vs_transformed",
                    "psnr_vs_reconstruction"]),
    "views": ("views.csv", lambda r, _: True, ["depth", "tap", "stride", "channels", "height", "width", "zero_share",
                                               "effective_rank"]),
    "interpolate": ("interpolation.csv", lambda r, _: float(r["alpha"]) == 0.5,
                    ["depth", "alpha", "psnr_vs_crossfade", "psnr_vs_a", "psnr_vs_b"]),
    "ablate": ("ablation.csv", lambda r, _: float(r["fraction"]) == 0.5, ["depth", "order", "fraction", "psnr", "ssim"]),
    "metrics": ("metrics.csv", lambda r, _: True, ["depth", "metric_a", "metric_b", "spearman"]),
}


def _cell(v: str) -> str:
    try:
        return v if v.isdigit() else f"{float(v):.3g}" if v else "—"
    except ValueError:
        return v


def probe_section(folder: Path) -> list[str]:
    """The HTML of one `featinv probe` folder: per probe, what it asks, a table and its figures."""
    info = json.loads((Path(folder) / "probe.json").read_text(encoding="utf-8"))
    strongest = {k: float(v[-1]) for k, v in info.get("transforms", {}).items()}
    depths = ", ".join(f"{d['name']} ({d['title']})" for d in info["depths"])
    out = ['<section id="probes">', "<h2>What the features encode</h2>",
           f"<p>{html.escape(depths)}; {len(info['images'])} images ({html.escape(', '.join(info['images']))}).</p>"]
    out += [f"<p>{html.escape(n)}</p>" for n in info.get("notes", [])]
    for name in info["probes"]:
        heading, text = PROBE_TEXT[name]
        csv_name, keep, cols = PROBE_COLUMNS[name]
        rows = [r for r in read_csv(Path(folder) / csv_name) if keep(r, strongest)]
        out += [f"<h3>{html.escape(heading)}</h3>", f"<p>{html.escape(text)}</p>", "<table>",
                "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>",
                *["<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in rows],
                "</table>"]
        out += [_img((Path(folder) / f).read_bytes(), f"{heading}: {f}") for f in info["files"][name] if f.endswith(".png")]
    return out + ["</section>"]
