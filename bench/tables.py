"""The documentation's result tables, generated from result files committed in the repository.

    python bench/tables.py            # rewrite every generated table in README.md and docs/
    python bench/tables.py --check    # list the tables that differ from their files; exit 1 if any

A generated table sits in a page between ``<!-- table: NAME -->`` and ``<!-- /table -->``; NAME is
one of TABLES below. Each table reads only committed files (bench/results/, the shipped decoders'
summary.json) and takes the machine class, date and command from the file itself or, for files
that do not record them, from bench/results/sources.yaml. Edit the files, never the tables:
tests/test_docs.py fails when a page's table differs from what its files give.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Callable

import yaml

from featinv.rundir import read_csv

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "bench/results"
DECODERS = "src/featinv/assets/decoders"
BLOCK = re.compile(r"(<!-- table: ([\w-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


# --- reading result files -------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sources(root: Path) -> dict:
    return yaml.safe_load((root / RESULTS / "sources.yaml").read_text(encoding="utf-8")) or {}


def provenance(root: Path, rel: str, data: dict | None = None) -> dict:
    """machine, date, command and status of a result file: its own fields first, then sources.yaml."""
    known: dict = {}
    for key, value in _sources(root).items():
        if rel == key or rel.startswith(key.rstrip("/") + "/"):
            known.update(value)
    data = data or {}
    return {k: data.get(k) or known.get(k) for k in ("machine", "date", "command", "status")}


def read_json(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text(encoding="utf-8"))


def shipped(root: Path) -> list[dict]:
    """The summary.json of each decoder that ships with featinv, coarsest last."""
    rows = []
    for folder in sorted((root / DECODERS).iterdir()):
        if (folder / "summary.json").is_file():
            rel = f"{DECODERS}/{folder.name}/summary.json"
            s = read_json(root, rel)
            rows.append({**s, "_source": provenance(root, rel, s)})
    return sorted(rows, key=lambda s: min(s["strides"].values()))


def metrics_csv(root: Path, rel: str) -> list[dict]:
    return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in read_csv(root / rel)]


# --- formatting -----------------------------------------------------------------------------------

def db(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def ssim(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def grouped(v: float, digits: int = 0) -> str:
    return f"{v:,.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def stage_name(s: dict) -> str:
    (layer,) = s["layers"]
    return f"{layer} ({s['strides'][layer]})"


def thumbnail(s: dict) -> dict:
    stride = min(s["strides"].values())
    return s["reference"][f"bicubic_x{stride}"]


# --- the tables -----------------------------------------------------------------------------------

def table_headline(root: Path) -> str:
    """README: what each depth keeps, the shipped decoders on the 100 held-out ImageNet photos."""
    rows = shipped(root)
    body = [[stage_name(s), db(s["val"]["psnr"]), ssim(s["val"]["ssim"]),
             f"{db(thumbnail(s)['psnr'])} / {ssim(thumbnail(s)['ssim'])}",
             s["_source"]["machine"], s["_source"]["date"]] for s in rows]
    table = markdown(["stage (stride)", "PSNR (dB)", "SSIM", "bicubic thumbnail at that stride", "machine", "date"], body)
    s = rows[0]
    return (f"{table}\n\nEfficientNet-Lite0 (ImageNet weights), {s['val_images']} held-out ImageNet photos, decoders "
            f"trained on {grouped(s['train_images'])} photos (those `featinv reconstruct stage1` … `stage4` use). "
            f"Reproduce: `{s['_source']['command']}`.")


def table_shipped(root: Path) -> str:
    """Results: the shipped decoders in full."""
    rows, body = shipped(root), []
    for s in rows:
        t = thumbnail(s)
        conv = "yes" if s["converged"] else f"no ({s['stop_reason']})"
        body.append([stage_name(s), f"{db(s['val']['psnr'])} / {ssim(s['val']['ssim'])}",
                     f"{db(t['psnr'])} / {ssim(t['ssim'])}", db(s["train_eval"]["psnr"]),
                     f"{s['decoder_parameters'] / 1e6:.2f}M", conv, str(s["epochs_run"]),
                     f"{s['train_pass_s'] / 60:.1f}", grouped(s["train_images"]), s["precision"],
                     s["_source"]["machine"], s["_source"]["date"]])
    header = ["stage (stride)", "val PSNR / SSIM", "bicubic thumbnail", "train PSNR", "parameters", "converged",
              "epochs", "minutes", "training photos", "precision", "machine", "date"]
    return f"{markdown(header, body)}\n\nReproduce: `{rows[0]['_source']['command']}`."


DEPTH_STUDY = f"{RESULTS}/quality-cpu.json"


def table_depth_study(root: Path) -> str:
    """Results: bench/quality.py's depth study (every configuration trained to convergence)."""
    q = read_json(root, DEPTH_STUDY)
    refs, test_refs = q["references"], q.get("test_references") or {}
    body = []
    for r in sorted(q["rows"], key=lambda r: (r["config"] == "all", r["stride"])):
        sem = r.get("semantic") or {}
        conv = "yes" if r["converged"] else f"no ({r['stop_reason']})"
        thumb, tthumb = refs[f"bicubic_x{r['stride']}"], test_refs.get(f"bicubic_x{r['stride']}", {})
        src = provenance(root, DEPTH_STUDY, r)
        body.append([r["config"], r["layers"].replace("+", " + "), str(r["stride"]),
                     f"{db(r['val_psnr'])} / {ssim(r['val_ssim'])}", f"{db(thumb['psnr'])} / {ssim(thumb['ssim'])}",
                     f"{db(r['test_psnr'])} / {ssim(r['test_ssim'])}", f"{db(tthumb.get('psnr'))} / {ssim(tthumb.get('ssim'))}",
                     db(r["train_psnr"]), f"{pct(sem.get('top1_agreement'))} / {pct(sem.get('top5_agreement'))}",
                     conv, str(r["epochs"]), r["precision"], src["machine"], src["date"]])
    header = ["configuration", "layers", "stride", "val PSNR / SSIM", "bicubic thumbnail (val)", "BSDS500 PSNR / SSIM",
              "bicubic thumbnail (BSDS500)", "train PSNR", "classifier agrees: top-1 / top-5", "converged", "epochs",
              "precision", "machine", "date"]
    r0 = q["rows"][0]
    mean = refs["mean_image"]
    lines = [markdown(header, body), "",
             f"EfficientNet-Lite0 (ImageNet weights), {grouped(r0['train_images'])} training / {r0['val_images']} val "
             f"ImageNet photos (split.csv), BSDS500's 200 test photos as a second domain; the mean training image scores "
             f"{db(mean['psnr'])} dB / {ssim(mean['ssim'])} on val. Paired per image on val (95% bootstrap interval):", ""]
    for p in q.get("paired", []):
        lines.append(f"- {p['a']} − {p['b']}: {p['mean_db']:+.2f} dB [{p['low_db']:+.2f}, {p['high_db']:+.2f}]")
    a = q["args"]
    lines += ["", f"Reproduce: `bench/quality.py --data CACHE --split-file ../shared/data/imagenet-sample/split.csv "
                  f"--test-data BSDS500-CACHE --minutes {a['minutes']:g} --configs {' '.join(a['configs'])}`."]
    return "\n".join(lines)


INVERSION = f"{RESULTS}/gpu-h200-invert.json"


def table_inversion(root: Path) -> str:
    """Results: decoder, refine and optimize per stage (bench/invert.py's table.json)."""
    t = read_json(root, INVERSION)
    src = provenance(root, INVERSION, t)
    body = []
    for r in t["rows"]:
        triple = lambda m: f"{db(r[m + '_psnr'])} / {ssim(r[m + '_ssim'])} / {r[m + '_fe']:.3f}"  # noqa: E731
        body.append([r["stage"], triple("decoder"), triple("refine"),
                     f"{r['refine_psnr_change']:+.2f} dB, {100 * r['refine_fe_change']:+.0f}%", triple("optimize"),
                     f"{r['refine_s_per_image']:.2f} / {r['optimize_s_per_image']:.2f}", src["machine"], src["date"]])
    header = ["stage", "decoder: PSNR / SSIM / feature error", "refine", "refine − decoder: PSNR, feature error",
              "optimize", "s/image: refine / optimize", "machine", "date"]
    a = t["args"]
    return (f"{markdown(header, body)}\n\nEfficientNet-Lite0 (ImageNet weights), the shipped decoders, the first "
            f"{a['images']} val photos of split.csv, {a['steps']} steps, float32. "
            f"Reproduce: `bench/invert.py --images {a['images']} --steps {a['steps']} --batch-size {a['batch_size']} "
            f"--device cuda`.")


SEMANTICS = f"{RESULTS}/semantics-shipped.json"


def fd(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f}"


def table_semantics(root: Path) -> str:
    """Results: both faces of the shipped pixel decoders (bench/semantics.py, part 1)."""
    t = read_json(root, SEMANTICS)
    src = provenance(root, SEMANTICS, t)
    body = []
    for r in t["shipped"]:
        ref = r["reference"]
        thumb = next(v for k, v in ref.items() if k.startswith("bicubic"))
        mean = ref["mean_image"]
        body.append([r["stage"], db(r["psnr"]), f"{r['feature_cosine']:.2f}", pct(r["top1_agreement"]),
                     f"{pct(r['judge_top1_agreement'])} / {pct(r['judge_top5_agreement'])}",
                     f"{pct(thumb['judge_top1_agreement'])} / {pct(mean['judge_top1_agreement'])}",
                     fd(r["fd_judge"]), f"{fd(thumb['fd_judge'])} / {fd(mean['fd_judge'])}", src["machine"], src["date"]])
    header = ["stage", "PSNR (dB)", "feature cosine", "top-1 agreement: the backbone itself",
              f"{t['shipped'][0]['judge']} (judge): top-1 / top-5", "judge top-1: thumbnail / mean image",
              "fd_judge", "fd_judge: thumbnail / mean image", "machine", "date"]
    n = t["shipped"][0]["n_images"]
    return (f"{markdown(header, body)}\n\nEfficientNet-Lite0 (ImageNet weights), the shipped pixel decoders, the {n} "
            f"val photos of split.csv. Reproduce: `{src['command']}`.")


def table_refine_judge(root: Path) -> str:
    """Concepts: refine makes the backbone agree, not the judge (bench/semantics.py, part 2)."""
    t = read_json(root, SEMANTICS)
    src = provenance(root, SEMANTICS, t)
    r = t["refine"]
    body = [[label, db(m["psnr"]), f"{m['feature_error']:.2f}", pct(m["top1_agreement"]), pct(m["judge_top1_agreement"])]
            for label, m in (("the stage-4 decoder", r["decoder"]), (f"refine, {r['steps']} Adam steps", r["refine"]))]
    header = ["stage-4 reconstructions", "PSNR (dB)", "feature error", "top-1 agreement: the backbone (Lite0)",
              f"top-1 agreement: the judge ({r['judge']})"]
    return (f"{markdown(header, body)}\n\n{r['n_images']} val photos; {src['machine']}, {src['date']}. "
            f"Reproduce: `{src['command']}`.")


SCREEN = f"{RESULTS}/semantic-screen-stage4.json"


def table_semantic_screen(root: Path) -> str:
    """Results: the objectives of #34 at stride 32 at equal CPU time (bench/semantic_screen.py)."""
    t = read_json(root, SCREEN)
    src = provenance(root, SCREEN, t)
    body = []
    for r in t["rows"]:
        sem = r["semantic"]
        body.append([r["candidate"], db(r["psnr"]), ssim(r["ssim"]),
                     f"{pct(sem.get('judge_top1_agreement'))} / {pct(sem.get('judge_top5_agreement'))}",
                     fd(sem.get("fd_judge")), pct(sem.get("top1_agreement")), str(r["epochs"]),
                     f"{r['images_per_s']:.0f}", f"{r['parameters'] / 1e6:.2f}M"])
    header = ["candidate", "PSNR (dB)", "SSIM", "judge top-1 / top-5", "fd_judge", "the backbone's own top-1",
              "epochs", "training images/s", "trained parameters"]
    return (f"{markdown(header, body)}\n\nEfficientNet-Lite0 {t['stage']}, {t['minutes']:g} minutes of training passes "
            f"each, the 900 training photos, scored on the 100 val photos, one seed; {src['machine']}, {src['date']}. "
            f"Reproduce: `{src['command']}`.")


GPU_RUNS = [  # (label, file): summary.json where the run finished, metrics.csv where it was cut
    ("stage1, batch 16, lr 1e-3 (the CPU recipe)", f"{RESULTS}/gpu-h200-stride4-batch16-summary.json"),
    ("stage1, the GPU defaults", f"{RESULTS}/gpu-h200-stride4-batch256-metrics.csv"),
    ("all four stages, the GPU defaults", f"{RESULTS}/gpu-h200-all-batch256-metrics.csv"),
]


def gpu_run_row(root: Path, label: str, rel: str) -> list[str]:
    if rel.endswith(".json"):
        s = read_json(root, rel)
        src = provenance(root, rel, s)
        status = "converged" if s["converged"] else s["stop_reason"]
        return [label, str(s["batch_size"]), str(s["epochs_run"]), f"{db(s['val']['psnr'])} / {ssim(s['val']['ssim'])}",
                grouped(s["train_images_per_s"]), "—", status, src["machine"], src["date"]]
    rows = metrics_csv(root, rel)
    src = provenance(root, rel)
    last, steady = rows[-1], statistics.median(r["epoch_time_s"] for r in rows[1:])
    rate = statistics.median(r["train_images_per_s"] for r in rows[1:])
    batch = "256"  # the GPU default (batch 0 on a GPU with ≥ 40 GB); metrics.csv does not record it
    return [label, batch, str(int(last["epoch"])), f"{db(last['val_psnr'])} / {ssim(last['val_ssim'])}",
            grouped(rate), f"{rows[0]['epoch_time_s']:.1f} / {steady:.1f}", src["status"], src["machine"], src["date"]]


def table_gpu_training(root: Path) -> str:
    """Results: training on one GPU (bench/gpu/run.sh), 2,437 training photos."""
    body = [gpu_run_row(root, label, rel) for label, rel in GPU_RUNS]
    header = ["run", "batch", "epochs", "val PSNR / SSIM (last epoch)", "training images/s",
              "first / median epoch, validation included (s)", "status", "machine", "date"]
    return markdown(header, body)


THROUGHPUT = [f"{RESULTS}/throughput-cpu.json", f"{RESULTS}/gpu-h200-throughput.json"]
VARIANTS = {"a": "(a) original loop", "base": "(b) before 0.2.0 (cf8e960)", "b": "(b) default recipe, loader",
            "c": "(c) default recipe, preloaded", "d": "(d) preloaded, batch 16", "e": "(e) preloaded, `--compile`",
            "f": "(f) preloaded, no cuDNN autotuning"}


def table_throughput(root: Path) -> str:
    """Benchmarks: bench/throughput.py on each machine it ran on."""
    body = []
    for rel in THROUGHPUT:
        t = read_json(root, rel)
        src = provenance(root, rel, t)
        for key in VARIANTS:
            r = t["results"].get(key)
            if r is None:
                continue
            epochs = f"{r['first_epoch_s']:.1f} / {r['steady_epoch_s']:.1f}" if "first_epoch_s" in r else "—"
            mem = grouped(r["peak_mib"]) if r.get("peak_mib") else "—"
            rate = r["images_per_s"]
            body.append([src["machine"], src["date"], VARIANTS[key], str(r["batch_size"]), r["precision"],
                         grouped(rate, 1 if rate < 100 else 0), epochs, mem])
    header = ["machine", "date", "variant", "batch", "precision", "images/s", "first / steady epoch (s)", "peak MiB"]
    return markdown(header, body)


PROBE = f"{RESULTS}/probe-shipped"


def _probe_rows(root: Path, name: str) -> list[dict]:
    return read_csv(root / PROBE / name)


def _per_depth(rows: list[dict], depths: list[str], cell: Callable[[dict], str], **match: str) -> list[str]:
    out = []
    for d in depths:
        r = next(r for r in rows if r["depth"] == d and all(r[k] == v for k, v in match.items()))
        out.append(cell(r))
    return out


def table_probe_findings(root: Path) -> str:
    """Results: one finding per probe of `featinv probe --shipped` (bench/probe_findings.py)."""
    info = read_json(root, f"{PROBE}/probe.json")
    depths = [d["name"] for d in info["depths"]]
    inv, views = _probe_rows(root, "invariance.csv"), _probe_rows(root, "views.csv")
    interp, abl, met = (_probe_rows(root, n) for n in ("interpolation.csv", "ablation.csv", "metrics.csv"))
    f = lambda v, d=2: f"{float(v):.{d}f}"  # noqa: E731
    both = lambda a, b, d=2: lambda r: f"{f(r[a], d)} / {f(r[b], d)}"  # noqa: E731
    orders = {(r["depth"], r["order"]): r for r in abl if r["fraction"] == "0.5"}
    body = [
        ["invariance", "4-pixel shift: feature change / change left after moving the maps one stride-4 cell",
         *_per_depth(inv, depths, both("feature_change", "aligned_change"), transform="shift", strength="4")],
        ["invariance", "grayscale input: the decoder's PSNR against the gray photo / against its colour reconstruction (dB)",
         *_per_depth(inv, depths, both("psnr_vs_transformed", "psnr_vs_reconstruction", 1), transform="grayscale")],
        ["views", "effective rank of the channels / channels",
         *_per_depth(views, depths, lambda r: f"{f(r['effective_rank'], 1)} / {r['channels']}")],
        ["interpolate", "halfway blend of two photos' features: PSNR against the pixel cross-fade (dB)",
         *_per_depth(interp, depths, lambda r: f(r["psnr_vs_crossfade"], 1), alpha="0.5")],
        ["ablate", "half the channels zeroed, PSNR (dB): most energetic half / a random half",
         *[f"{f(orders[(d, 'energy')]['psnr'], 1)} / {f(orders[(d, 'random')]['psnr'], 1)}" for d in depths]],
        ["metrics", "Spearman ρ of PSNR and SSIM over the photos",
         *_per_depth(met, depths, lambda r: f"{float(r['spearman']):+.2f}", metric_a="psnr", metric_b="ssim")],
    ]
    src = provenance(root, f"{PROBE}/probe.json", info)
    table = markdown(["probe", "measured", *depths, "machine", "date"], [[*r, src["machine"], src["date"]] for r in body])
    return (f"{table}\n\nThe decoders that ship with featinv (EfficientNet-Lite0, ImageNet weights) on "
            f"{len(info['images'])} held-out ImageNet photos (the first val photos of split.csv). "
            f"Reproduce: `python bench/probe_findings.py --keep {PROBE}`.")


TABLES: dict[str, Callable[[Path], str]] = {
    "headline": table_headline,
    "shipped": table_shipped,
    "depth-study": table_depth_study,
    "inversion": table_inversion,
    "gpu-training": table_gpu_training,
    "throughput": table_throughput,
    "probe-findings": table_probe_findings,
    "semantics": table_semantics,
    "refine-judge": table_refine_judge,
    "semantic-screen": table_semantic_screen,
}


# --- pages ----------------------------------------------------------------------------------------

def pages(docs_root: Path) -> list[Path]:
    return [docs_root / "README.md", *sorted((docs_root / "docs").rglob("*.md"))]


def render(text: str, data_root: Path, cache: dict | None = None) -> str:
    """``text`` with every generated table replaced by what the result files under ``data_root`` give."""
    cache = {} if cache is None else cache

    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise SystemExit(f"unknown table {name!r}; known: {', '.join(TABLES)}")
        if name not in cache:
            cache[name] = TABLES[name](data_root)
        return f"{m.group(1)}{cache[name]}\n{m.group(4)}"

    return BLOCK.sub(fill, text)


def stale(docs_root: Path = ROOT, data_root: Path = ROOT) -> list[str]:
    """``page: table`` for every generated table whose text differs from its files."""
    out, cache = [], {}
    for page in pages(docs_root):
        text = page.read_text(encoding="utf-8")
        fresh = render(text, data_root, cache)
        old, new = BLOCK.findall(text), BLOCK.findall(fresh)
        out += [f"{page.relative_to(docs_root)}: {a[1]}" for a, b in zip(old, new) if a[2] != b[2]]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report tables that differ from their files")
    args = ap.parse_args(argv)
    if args.check:
        diff = stale()
        for d in diff:
            print(f"stale: {d} (run python bench/tables.py)")
        return 1 if diff else 0
    cache: dict = {}
    for page in pages(ROOT):
        text = page.read_text(encoding="utf-8")
        fresh = render(text, ROOT, cache)
        if fresh != text:
            page.write_text(fresh, encoding="utf-8")
            print(f"updated {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
