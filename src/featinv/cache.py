"""Prepared image caches: every image decoded, resized and center-cropped once, into one uint8 file.

A cache folder holds ``images.u8`` (N×S×S×3 uint8, memory-mapped when read), ``index.csv``
(``i, file, label, ok``), ``meta.json`` and, when some files could not be used, ``skipped.csv``.
``featinv prepare`` writes it from an image folder or straight from the ILSVRC2012 validation
tar (streamed, never extracted); ``--data CACHE`` reads it wherever a folder is accepted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .figures import write_skipped
from .images import IMAGE_EXTENSIONS, list_folder, load_image, preprocess
from .utils import FeatinvError, atomic_write_bytes, atomic_write_text, default_num_workers, progress_enabled

log = logging.getLogger("featinv")

FORMAT = "featinv-cache-1"
CHUNK = 64  # images decoded between two progress saves


def is_cache(path: Union[str, Path]) -> bool:
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        return False


@dataclass
class CacheInfo:
    root: Path
    size: int
    n: int
    files: list[str]
    labels: list[int]
    ok: list[bool]
    classes: list[str]


def read_cache(path: Union[str, Path]) -> CacheInfo:
    root = Path(path)
    meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    if not meta.get("complete"):
        raise FeatinvError(f"the cache in {root} is incomplete; run `featinv prepare` again with the same --out to finish it.")
    with open(root / "index.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    check_cache_files(root, meta, len(rows))
    return CacheInfo(
        root=root, size=meta["size"], n=len(rows), files=[r["file"] for r in rows],
        labels=[int(r["label"]) for r in rows], ok=[r["ok"] == "1" for r in rows], classes=meta.get("classes", []),
    )


def check_cache_files(root: Path, meta: dict, n_index: int) -> None:
    """A cache whose parts disagree (a truncated copy, a meta.json from another cache) is refused
    in one sentence naming the file, before a worker reads past the end of the pixels."""
    n, size = meta.get("n"), meta.get("size")
    if not isinstance(n, int) or not isinstance(size, int) or n != n_index:
        raise FeatinvError(f"{root / 'meta.json'} does not match {root / 'index.csv'} ({n} images vs {n_index} rows); "
                           "prepare the cache again.")
    pixels = root / "images.u8"
    expected = n * size * size * 3
    actual = pixels.stat().st_size if pixels.is_file() else 0
    if actual != expected:
        raise FeatinvError(f"{pixels} holds {actual} bytes, but {n} images of {size}×{size} need {expected}; "
                           "the file is truncated or from another cache: prepare the cache again.")


@lru_cache(maxsize=8)
def cache_array(root: str) -> np.memmap:
    """The cache's pixels, memory-mapped read-only (one mapping per process and cache)."""
    meta = json.loads((Path(root) / "meta.json").read_text(encoding="utf-8"))
    n, size = meta["n"], meta["size"]
    return np.memmap(Path(root) / "images.u8", dtype=np.uint8, mode="r", shape=(n, size, size, 3))


# ── ILSVRC2012 labels ───────────────────────────────────────────────────────────────────────


@lru_cache(maxsize=1)
def devkit_to_class_index() -> dict[int, tuple[str, int]]:
    """ILSVRC2012 devkit id (1..1000, the ids in ``ILSVRC2012_validation_ground_truth.txt``) →
    (wnid, class index). The devkit orders classes differently from the sorted-wnid order that
    torchvision's classifiers and ImageFolder use; this table (from the devkit's meta.mat) maps one to the other."""
    path = resources.files("featinv") / "assets" / "ilsvrc2012_devkit_ids.csv"
    with path.open("r", encoding="utf-8") as f:
        return {int(r["ilsvrc2012_id"]): (r["wnid"], int(r["class_index"])) for r in csv.DictReader(f)}


def read_ground_truth(path: Union[str, Path]) -> dict[str, int]:
    """``ILSVRC2012_validation_ground_truth.txt`` → {``ILSVRC2012_val_00000001.JPEG``: class index}."""
    table = devkit_to_class_index()
    labels = {}
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").split(), start=1):
        devkit_id = int(line)
        if devkit_id not in table:
            raise FeatinvError(f"{path}: line {i} holds {devkit_id}, not a devkit id in 1..1000.")
        labels[f"ILSVRC2012_val_{i:08d}.JPEG"] = table[devkit_id][1]
    return labels


# ── sources ─────────────────────────────────────────────────────────────────────────────────


def _safe_member_name(name: str) -> str:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or name.startswith(("/", "\\")):
        raise FeatinvError(f"refusing the tar file: member '{name}' has an absolute path or '..'; it is not a plain image archive.")
    return p.as_posix()


def list_tar(path: Path) -> list[str]:
    """Image members of a tar, in archive order; any unsafe member name rejects the whole file."""
    names = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                name = _safe_member_name(m.name)
                if m.isfile() and name.lower().endswith(IMAGE_EXTENSIONS):
                    names.append(name)
    except tarfile.TarError as e:
        raise FeatinvError(f"{path} is not a readable tar file ({e}).") from None
    return names


def _tar_bytes(path: Path, wanted: Sequence[str]) -> Iterator[tuple[str, bytes]]:
    """Stream members' bytes in archive order (a single pass, nothing extracted)."""
    todo = set(wanted)
    with tarfile.open(path, "r|*") as tar:
        for m in tar:
            if m.name in todo and m.isfile():
                f = tar.extractfile(m)
                yield m.name, f.read() if f is not None else b""


def _decode(item: tuple[str, Union[bytes, str], int, int]) -> tuple[str, Optional[np.ndarray], str]:
    """(name, bytes or path, size, resize) → (name, S×S×3 uint8 or None, reason)."""
    name, src, size, resize = item
    try:
        img = load_image(io.BytesIO(src) if isinstance(src, bytes) else src)
        x = preprocess(img, image_size=size, resize=resize, train=False)
        return name, x.permute(1, 2, 0).numpy(), ""
    except Exception as e:  # noqa: BLE001 - every decode failure is a reported skip
        return name, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


# ── writer ──────────────────────────────────────────────────────────────────────────────────


def prepare(
    source: Union[str, Path],
    out: Union[str, Path],
    size: int = 224,
    labels: Optional[Union[str, Path]] = None,
    workers: int = -1,
) -> CacheInfo:
    """Decode every image of ``source`` (a folder or a tar) once into a cache at ``out``.

    Images are resized so the short side is ``max(256, size)`` and center-cropped to ``size``;
    prepare at a larger ``size`` (say 256) to keep random-crop augmentation. Interrupted runs
    resume: images already written are not decoded again.
    """
    source, out = Path(source), Path(out)
    if size < 32:
        raise FeatinvError(f"--size must be at least 32, got {size}.")
    resize = max(256, size)
    kind, files, file_labels, classes = _list_source(source)
    if labels:
        file_labels, classes = _ground_truth_labels(files, labels)
    if not files:
        raise FeatinvError(f"no images found in {source}.")
    plan = {"format": FORMAT, "source": str(source.resolve()), "kind": kind, "size": size, "resize": resize,
            "n": len(files), "classes": classes}
    out.mkdir(parents=True, exist_ok=True)
    done = _resume_point(out, plan)
    if done is None:
        log.info("%s already holds this cache; nothing to do", out)
        return read_cache(out)
    arr = np.memmap(out / "images.u8", dtype=np.uint8, mode="r+" if (out / "images.u8").is_file() and done > 0 else "w+",
                    shape=(len(files), size, size, 3))
    ok = _read_ok(out / "ok.partial", len(files)) if done else np.zeros(len(files), dtype=bool)
    reasons: dict[str, str] = dict(_read_reasons(out / "skipped.csv")) if done else {}
    if done:
        log.info("resuming: %d of %d images already prepared", done, len(files))
    todo = files[done:]
    sources: Iterator = _tar_bytes(source, todo) if kind == "tar" else ((f, str(source / f)) for f in todo)
    done = _decode_into(arr, ok, reasons, files, ((name, src, size, resize) for name, src in sources), done, out, workers)
    if done < len(files):
        raise FeatinvError(f"the tar ended early: {len(files) - done} listed images were not found in the stream.")
    _finish(out, plan, files, file_labels, ok, reasons)
    return read_cache(out)


def _list_source(source: Path) -> tuple[str, list[str], list[int], list[str]]:
    """(kind, files, labels, classes) of an image folder or a tar."""
    if source.is_dir():
        images = list_folder(source.resolve())
        return "folder", [r.relpath for r in images.records], [r.label for r in images.records], images.classes
    if source.is_file():
        files = list_tar(source)
        return "tar", files, [-1] * len(files), []
    raise FeatinvError(f"--data {source} does not exist; pass an image folder or a tar file.")


def _ground_truth_labels(files: Sequence[str], labels: Union[str, Path]) -> tuple[list[int], list[str]]:
    gt = read_ground_truth(labels)
    file_labels = [gt.get(PurePosixPath(f).name, -1) for f in files]
    missing = sum(label < 0 for label in file_labels)
    if missing:
        log.warning("%d image(s) have no line in %s; their label is -1", missing, labels)
    return file_labels, [w for w, _ in sorted(devkit_to_class_index().values(), key=lambda wc: wc[1])]


def _resume_point(out: Path, plan: dict) -> Optional[int]:
    """Images already prepared in ``out`` for this plan (0: a new cache); None: it is complete."""
    meta_path, progress_path = out / "meta.json", out / "progress.json"
    if not meta_path.is_file():
        atomic_write_text(meta_path, json.dumps({**plan, "complete": False}, indent=2) + "\n")
        return 0
    old = json.loads(meta_path.read_text(encoding="utf-8"))
    same = {k: old.get(k) for k in plan} == plan
    if old.get("complete") and same:
        return None
    if not same:
        raise FeatinvError(f"{out} holds a cache of another source or size; choose another --out.")
    return json.loads(progress_path.read_text(encoding="utf-8"))["done"] if progress_path.is_file() else 0


def _decode_into(arr: np.memmap, ok: np.ndarray, reasons: dict[str, str], files: Sequence[str], items: Iterator,
                 done: int, out: Path, workers: int) -> int:
    """Decode ``items`` (in a pool of ``workers``) into their rows; progress saved every CHUNK images."""
    from .utils import progress_bar as tqdm

    n_workers = default_num_workers() if workers < 0 else workers
    ctx = get_context("spawn" if os.name != "posix" else "fork")
    pool = ctx.Pool(n_workers, initializer=_worker_init) if n_workers > 0 else None
    results = pool.imap(_decode, items, chunksize=4) if pool else map(_decode, items)
    position = {f: i for i, f in enumerate(files)}
    bar = tqdm(total=len(files), initial=done, desc="prepare", unit="img", disable=not progress_enabled())
    try:
        for name, x, reason in results:
            i = position[name]
            if x is None:
                reasons[name] = reason
                log.warning("skipping %s: %s", name, reason)
            else:
                arr[i] = x
                ok[i] = True
            done = i + 1
            bar.update(1)
            if done % CHUNK == 0:
                _save_progress(out, arr, ok, reasons, done)
    finally:
        bar.close()
        if pool:
            pool.terminate()
        _save_progress(out, arr, ok, reasons, done)
    return done


def _finish(out: Path, plan: dict, files: Sequence[str], file_labels: Sequence[int], ok: np.ndarray,
            reasons: dict[str, str]) -> None:
    """The index, the completed meta; the partial-progress files removed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["i", "file", "label", "ok"])
    w.writerows([i, f, lab, int(good)] for i, (f, lab, good) in enumerate(zip(files, file_labels, ok)))
    atomic_write_text(out / "index.csv", buf.getvalue())
    atomic_write_text(out / "meta.json", json.dumps({**plan, "complete": True, "skipped": len(reasons)}, indent=2) + "\n")
    for leftover in (out / "progress.json", out / "ok.partial"):
        leftover.unlink(missing_ok=True)
    log.info("prepared %d images (%d skipped) into %s", int(ok.sum()), len(reasons), out)


def _worker_init() -> None:
    # A forked child must not use the parent's OpenMP thread pool (it can deadlock), and one
    # thread per process is what a pool of decoders wants anyway. Ctrl-C is the parent's to handle.
    import signal

    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _save_progress(out: Path, arr: np.memmap, ok: np.ndarray, reasons: dict[str, str], done: int) -> None:
    arr.flush()  # pixels reach the disk before the count that vouches for them
    atomic_write_bytes(out / "ok.partial", ok.astype(np.uint8).tobytes())
    write_skipped(sorted(reasons.items()), out / "skipped.csv")
    atomic_write_text(out / "progress.json", json.dumps({"done": done}) + "\n")


def _read_ok(path: Path, n: int) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(bool).copy() if path.is_file() else np.zeros(n, bool)


def _read_reasons(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [(r["file"], r["reason"]) for r in csv.DictReader(f)]
