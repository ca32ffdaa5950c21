"""The training loop: features from a frozen backbone, a decoder fitted to the [0,1] images."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import random
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import __version__, report
from .backbones import FeatureExtractor
from .config import RunConfig, diff_configs, load_config, save_config
from .data import Augment, ImageDataset, SkipLog, make_loader, split_for_config, to_float
from .decoders import build_decoder, count_parameters
from .evaluate import (
    Evaluation,
    evaluate_loader,
    Run,
    save_extremes,
    save_pairs,
    write_per_image,
    write_semantics,
)
from .losses import build_loss
from .rundir import RunLock
from .utils import (
    FeatinvError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    autocast,
    console_messages,
    progress_enabled,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger("featinv")

METRIC_FIELDS = ["epoch", "train_loss", "val_mse", "val_psnr", "val_ssim", "lr", "epoch_time_s", "train_images_per_s"]


def metric_fields(parts: list[str]) -> list[str]:
    """metrics.csv columns: the base ones plus ``train_<part>`` for each loss term."""
    return METRIC_FIELDS[:2] + [f"train_{p}" for p in parts] + METRIC_FIELDS[2:]
# Keys a resumed run may change; anything else must match the saved config.
RESUMABLE_CHANGES = {
    ("train", "epochs"), ("train", "device"), ("train", "checkpoint_every"), ("train", "patience"), ("train", "minutes"),
    ("data", "num_workers"), ("data", "strict"),
}


class TrainingInterrupted(FeatinvError):
    """SIGINT or SIGTERM arrived; a resumable checkpoint was saved."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value


class StopSignals:
    """While active, SIGINT and SIGTERM only set ``signal``: the loop checkpoints and stops
    at the end of the current step instead of dying mid-write."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def record_failure(out: Path, message: str) -> None:
    """Mark the run failed in ``summary.json`` (checkpoints stay as they were)."""
    atomic_write_text(out / "summary.json", json.dumps({"status": "failed", "error": message}, indent=2) + "\n")


def validate_config(cfg: RunConfig) -> None:
    """Reject impossible settings before any heavy work starts."""
    t, d = cfg.train, cfg.data
    checks = [
        (t.epochs >= 1, f"--epochs must be at least 1, got {t.epochs}."),
        (t.batch_size >= 1, f"--batch-size must be at least 1, got {t.batch_size}."),
        (t.lr > 0 and math.isfinite(t.lr), f"--lr must be a positive number, got {t.lr}."),
        (t.weight_decay >= 0, f"weight_decay must be >= 0, got {t.weight_decay}."),
        (t.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {t.schedule!r}."),
        (t.plateau_epochs >= 1, f"--plateau-epochs must be at least 1, got {t.plateau_epochs}."),
        (t.plateau_db >= 0, f"--plateau-db must be >= 0, got {t.plateau_db}."),
        (t.decay_epochs >= 1, f"--decay-epochs must be at least 1, got {t.decay_epochs}."),
        (0 < d.crop_scale <= 1, f"--crop-scale must be in (0, 1], got {d.crop_scale}."),
        (0 <= d.color_jitter < 1, f"--color-jitter must be in [0, 1), got {d.color_jitter}."),
        (t.minutes is None or t.minutes > 0, f"--minutes must be positive, got {t.minutes}."),
        (t.grad_clip >= 0, f"--grad-clip must be >= 0, got {t.grad_clip}."),
        (0 <= t.ema < 1, f"--ema must be in [0, 1), got {t.ema}."),
        (t.patience >= 0, f"--patience must be >= 0, got {t.patience}."),
        (not (t.cache_features and d.augment),
         "--cache-features needs --no-augment: random crops and flips give new features every epoch."),
        (t.num_save >= 0, f"--num-save must be >= 0, got {t.num_save}."),
        (t.checkpoint_every >= 0, f"--checkpoint-every must be >= 0, got {t.checkpoint_every}."),
        (d.image_size >= 32, f"image_size must be at least 32, got {d.image_size}."),
        (bool(d.data), "--data is required: a folder of images."),
        (bool(cfg.backbone.layers), "--layers needs at least one layer."),
    ]
    for ok, message in checks:
        if not ok:
            raise FeatinvError(message)


SCHEDULES = ("plateau", "cosine", "constant")


def plateaued(history: Sequence[float], window: int, min_gain: float) -> bool:
    """The stopping rule: True when the best of the last ``window`` values (val PSNR per epoch)
    beats the best before them by less than ``min_gain``. Needs more than ``window`` values.

    The best, not the last, so that one noisy epoch neither fires the rule nor hides a plateau.
    """
    if window < 1 or len(history) <= window:
        return False
    return max(history[-window:]) - max(history[:-window]) < min_gain


def plateau_factor(step: int, warmup_steps: int, decay_start: Optional[int], decay_steps: int) -> float:
    """The plateau schedule: linear warm-up, then constant until ``decay_start`` (unknown until the
    rule fires), then a cosine to zero over ``decay_steps``."""
    warm = (step + 1) / warmup_steps if warmup_steps and step < warmup_steps else 1.0
    if decay_start is None or step < decay_start:
        return warm
    return min(warm, cosine((step - decay_start) / max(1, decay_steps)))


def lr_factor(total_steps: int, warmup_steps: int, schedule: str) -> Callable[..., float]:
    """Linear warm-up, then cosine decay to zero (or constant).

    ``f(step)`` decays over the steps after the warm-up; ``f(step, progress)`` (a time budget)
    decays over ``progress``, the elapsed fraction of the budget, capped by the warm-up ramp.
    """

    def f(step: int, progress: Optional[float] = None) -> float:
        warm = (step + 1) / warmup_steps if warmup_steps and step < warmup_steps else 1.0
        if schedule == "constant":
            return warm
        if progress is not None:
            return min(warm, cosine(progress))
        if warm < 1.0:
            return warm
        return cosine((step - warmup_steps) / max(1, total_steps - warmup_steps))

    return f


def cosine(progress: float) -> float:
    """Cosine decay from 1 at progress 0 to 0 at progress 1."""
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_metrics(rows: list[dict[str, Any]], path: Path, fields: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints" / name).is_file() for name in ("last.pt", "previous.pt"))


def save_last(state: dict, ckpt_dir: Path) -> None:
    """Write ``last.pt``, keeping the one before it as ``previous.pt``: a damaged last.pt then
    costs one checkpoint's worth of steps, not the run."""
    last = ckpt_dir / "last.pt"
    if last.is_file():
        os.replace(last, ckpt_dir / "previous.pt")
    atomic_torch_save(state, last)


def load_checkpoint(ckpt_dir: Path) -> dict:
    """``last.pt``, or ``previous.pt`` (saying so) when last.pt is missing or cannot be read.
    Loaded with weights_only=True: a checkpoint file can never run code."""
    errors = []
    for name in ("last.pt", "previous.pt"):
        path = ckpt_dir / name
        if not path.is_file():
            errors.append(f"{path} is missing")
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - unpickling refusals and corrupt files alike
            errors.append(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        if errors:
            log.warning("%s; resuming from %s, the checkpoint before it", errors[0], path)
        return ckpt
    raise FeatinvError(
        "--resume: no checkpoint could be loaded as a plain checkpoint (loaded with weights_only=True, "
        f"which never runs code from the file): {'; '.join(errors)}."
    )


def check_output_dir(out: Path, cfg: RunConfig, resume: bool) -> None:
    """A new run needs a folder without a run in it; a resumed one, the same run's folder."""
    saved_path = out / "config.yaml"
    if not resume:
        if saved_path.is_file():
            raise FeatinvError(
                f"{out} already holds a run; pass --resume to continue it, or choose another --out."
            )
        return
    if not has_checkpoint(out):
        raise FeatinvError(f"--resume: {out} holds no checkpoint to resume; drop --resume to start a new run there.")
    changed = [k for k in diff_configs(load_config(saved_path).to_dict(), cfg.to_dict()) if k not in RESUMABLE_CHANGES]
    if changed:
        raise FeatinvError(
            f"--resume: {out} holds a different run (settings differ: {', '.join('.'.join(k) for k in changed)}); "
            "only --epochs, --minutes, --patience, --device, --workers, --checkpoint-every and --strict may change when resuming."
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def export_decoder(decoder: nn.Module, extractor: FeatureExtractor, cfg: RunConfig, out: Path) -> None:
    """``decoder.safetensors`` (weights) + ``decoder.json`` (everything needed to rebuild it)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
    atomic_write_bytes(out / "decoder.safetensors", save(tensors))
    meta = {
        "featinv_version": __version__,
        "backbone": cfg.backbone.name,
        "layers": cfg.backbone.layers,
        "weights": extractor.weights_info,
        "decoder": decoder.spec,
    }
    atomic_write_text(out / "decoder.json", json.dumps(meta, indent=2) + "\n")


def record_command(out: Path, command: Optional[str]) -> None:
    """Append the invoking command line to ``out/commands.txt`` (one line per session)."""
    if not command:
        return
    path = out / "commands.txt"
    before = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, before + command + "\n")


def train(
    cfg: RunConfig,
    out: Union[str, Path],
    resume: bool = False,
    command: Optional[str] = None,
    verbose: Optional[bool] = None,
    semantic: bool = True,
    break_lock: bool = False,
) -> dict[str, Any]:
    """Train a decoder as ``cfg`` says, writing the run directory ``out``; returns its summary.

    ``command``: the command line that asked for it (shell-quoted), kept in ``commands.txt``
    and ``summary.json`` so that the run directory says how to reproduce it. ``verbose``: print
    the per-epoch messages when logging is not configured (None: in a notebook, where progress
    bars show too). ``semantic``: with pretrained backbone weights, also score how often the
    backbone's classifier agrees on original and reconstruction (``semantic.json``).
    ``break_lock``: take over a run directory locked by a process on another host."""
    with console_messages(verbose), RunLock(Path(out), break_lock):
        return _train(cfg, Path(out), resume, command, semantic)


def _train(cfg: RunConfig, out: Path, resume: bool, command: Optional[str], semantic: bool) -> dict[str, Any]:
    out = Path(out)
    validate_config(cfg)
    check_output_dir(out, cfg, resume)
    t0 = time.perf_counter()
    seed = cfg.train.seed
    seed_everything(seed)
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    skips = SkipLog(strict=cfg.data.strict)
    d = cfg.data
    train_recs, val_recs = split_for_config(d, skips)
    extractor = FeatureExtractor(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.layers, seed=seed).to(device)
    shapes = extractor.feature_shapes(d.image_size)
    ref_stride = min(extractor.strides(d.image_size).values())
    torch.manual_seed(seed)  # the decoder's initial weights do not depend on the backbone's build
    decoder = build_decoder(cfg.decoder.name, shapes, d.image_size, **cfg.decoder.options()).to(device)
    cl = cfg.train.channels_last
    if cl:
        extractor = extractor.to(memory_format=torch.channels_last)
        decoder = decoder.to(memory_format=torch.channels_last)
    # `decoder` is what is saved; `step_decoder` what runs (compiled on request).
    step_decoder = torch.compile(decoder) if cfg.train.compile else decoder
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = build_loss(cfg.loss, cfg.backbone.name, cfg.backbone.weights, seed).to(device)
    fields = metric_fields(loss_fn.parts)
    # The weights that are scored and saved: an exponential moving average of the decoder's
    # (batch-norm buffers included) when --ema is set, else the decoder itself.
    ema = None
    if cfg.train.ema > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(decoder, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema), use_buffers=True)
    log.info(
        "%d train / %d val images; %s (%s weights) layers %s → %s decoder (%.2fM parameters) on %s",
        len(train_recs), len(val_recs), cfg.backbone.name, extractor.weights_info["weights"],
        "+".join(cfg.backbone.layers), cfg.decoder.name, count_parameters(decoder) / 1e6, device,
    )

    pin = device.type == "cuda"
    train_ds = ImageDataset(train_recs, d.image_size, d.resize, train=d.augment, seed=seed,
                            augment=Augment(d.crop_scale, d.color_jitter))
    val_ds = ImageDataset(val_recs, d.image_size, d.resize, train=False)
    train_loader = make_loader(train_ds, cfg.train.batch_size, shuffle=True, seed=seed, num_workers=d.num_workers, pin_memory=pin)
    val_loader = make_loader(val_ds, cfg.train.batch_size, shuffle=False, num_workers=d.num_workers, pin_memory=pin)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.train.batch_size)
    total = cfg.train.epochs * steps_per_epoch
    opt = torch.optim.AdamW(decoder.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    warmup_steps = round(cfg.train.warmup_epochs * steps_per_epoch)
    plateau = cfg.train.schedule == "plateau"
    schedule = lr_factor(total, warmup_steps, "constant" if plateau else cfg.train.schedule)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

    ckpt_dir = out / "checkpoints"
    start_epoch, start_step, best_psnr, best_epoch = 0, 0, -math.inf, 0
    mean_sum = torch.zeros(3, d.image_size, d.image_size, dtype=torch.float64, device=device)
    mean_n = 0
    # Sums over the epoch in progress: the total loss, then each part.
    loss_sum = torch.zeros(1 + len(loss_fn.parts), dtype=torch.float64, device=device)
    n = 0
    elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
    train_s = 0.0  # wall time of the training passes of finished epochs (validation excluded)
    t_epoch, in_epoch = time.perf_counter(), False
    epoch_before = 0.0  # seconds of the epoch in progress spent in an earlier session (a mid-epoch resume)
    # The plateau schedule: the global step where the final decay began (None: not yet), its
    # length, and whether the stopping rule (not a budget) started it.
    decay_start: Optional[int] = None
    decay_steps, converged = 0, False
    if resume:
        ckpt = load_checkpoint(ckpt_dir)
        if ckpt["decoder_spec"] != decoder.spec:
            raise FeatinvError(
                f"--resume: the checkpoint in {out} was built for another decoder, backbone or layer set "
                f"({ckpt['decoder_spec']['name']} on {', '.join(ckpt['decoder_spec']['shapes'])})."
            )
        decoder.load_state_dict(ckpt["decoder"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_step = ckpt["epoch"], ckpt["step"]
        best_psnr, best_epoch = ckpt["best_psnr"], ckpt["best_epoch"]
        mean_sum, mean_n = ckpt["mean_sum"].to(device), ckpt["mean_n"]
        loss_sum, n = ckpt["loss_sum"].to(device), ckpt["n"]
        torch.set_rng_state(ckpt["rng"])
        elapsed_before = ckpt["elapsed_s"]
        train_s = ckpt["train_s"]
        epoch_before = ckpt.get("epoch_s", 0.0) if start_step else 0.0
        decay_start, decay_steps, converged = ckpt.get("decay_start"), ckpt.get("decay_steps", 0), ckpt.get("converged", False)
        log.info("resuming %s at epoch %d, step %d", out, start_epoch + 1, start_step)
    fcache = None
    if cfg.train.cache_features:
        from .cache import FeatureCache

        FeatureCache.check_space(out / "feature_cache", len(train_ds), shapes)
        fcache = FeatureCache(out / "feature_cache", len(train_ds), shapes, ckpt.get("feature_filled") if resume else None)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    record_command(out, command)
    metrics_path = out / "metrics.csv"
    rows = [r for r in _read_metrics(metrics_path) if int(r["epoch"]) <= start_epoch]
    _write_metrics(rows, metrics_path, fields)
    scored = ema.module if ema is not None else decoder  # what is evaluated and exported

    def checkpoint(epoch: int, step: int) -> dict:
        """``epoch`` epochs done, plus ``step`` batches of the next one."""
        if fcache is not None:
            fcache.flush()  # rows marked filled below are on disk first
        return {
            "epoch": epoch,
            "step": step,
            "decoder": decoder.state_dict(),
            "decoder_spec": decoder.spec,
            "ema": ema.state_dict() if ema is not None else {},
            "feature_filled": fcache.filled.clone() if fcache is not None else torch.zeros(0, dtype=torch.bool),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "best_psnr": best_psnr,
            "best_epoch": best_epoch,
            "mean_sum": mean_sum.cpu(),
            "mean_n": mean_n,
            "loss_sum": loss_sum.cpu(),
            "n": n,
            "rng": torch.get_rng_state(),
            "elapsed_s": elapsed_before + time.perf_counter() - t0,
            "train_s": spent(),
            "epoch_s": epoch_before + time.perf_counter() - t_epoch if in_epoch else 0.0,
            "decay_start": decay_start,
            "decay_steps": decay_steps,
            "converged": converged,
            "config": cfg.to_dict(),
        }

    def start_decay(history: list[dict], epochs_done: int) -> tuple[Optional[int], int, bool]:
        """The plateau schedule's decision after an epoch: (decay_start, decay_steps, converged)."""
        t = cfg.train
        left = t.epochs - epochs_done
        room = left
        if budget_s is not None:  # whole epochs that still fit in the time budget
            room = min(left, int((budget_s - train_s) / max(train_s / max(1, len(history)), 1e-9)))
        here = epochs_done * steps_per_epoch
        if plateaued([float(r["val_psnr"]) for r in history], t.plateau_epochs, t.plateau_db):
            n_decay = max(1, min(t.decay_epochs, room))
            log.info("val PSNR gained < %g dB over the last %d epochs: converged; decaying the learning rate "
                     "over %d epoch(s), then stopping", t.plateau_db, t.plateau_epochs, n_decay)
            return here, n_decay * steps_per_epoch, True
        if 0 < room <= t.decay_epochs:
            log.info("the budget leaves %d epoch(s) and val PSNR still rises: decaying the learning rate now; "
                     "the run will be flagged as not converged", room)
            return here, room * steps_per_epoch, False
        return None, 0, False

    def set_lr(factor: float) -> None:
        for group in opt.param_groups:
            group["lr"] = cfg.train.lr * factor

    def spent() -> float:
        """Training-pass seconds so far, the epoch in progress included."""
        return train_s + (time.perf_counter() - t_epoch if in_epoch else 0.0)

    def fail(message: str) -> FeatinvError:
        record_failure(out, message)
        return FeatinvError(message)

    def nonfinite(value: float, where: str) -> FeatinvError:
        return fail(
            f"the loss became {value} {where}; training stopped and the last good checkpoint is kept "
            f"in {ckpt_dir}. Try a smaller --lr."
        )

    def save_mid_epoch(epoch: int, step: int) -> None:
        # Between finite-loss checks (every 20 steps on a GPU) a bad step may have gone by:
        # never checkpoint weights it touched.
        if not math.isfinite(total := float(loss_sum[0])):
            raise nonfinite(total, f"in epoch {epoch + 1} before step {step}")
        save_last(checkpoint(epoch, step), ckpt_dir)

    from tqdm.auto import tqdm

    ev: Optional[Evaluation] = None
    stopped_early = False
    stop_reason = "epoch cap"
    last = cfg.train.epochs - 1
    every = cfg.train.checkpoint_every
    check_every = 1 if device.type == "cpu" else 20  # finite-loss checks sync the host; free on the CPU
    budget_s = cfg.train.minutes * 60 if cfg.train.minutes else None
    out_of_time = False
    if budget_s is not None and train_s >= budget_s:  # a resumed run whose budget is spent
        start_epoch = cfg.train.epochs
    if plateau and decay_start is not None and start_step == 0 and start_epoch * steps_per_epoch >= decay_start + decay_steps:
        start_epoch = cfg.train.epochs  # a resumed run that already finished its final decay
        stop_reason = "converged" if converged else "decayed at the budget's end"
    with StopSignals() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            t_epoch, in_epoch = time.perf_counter(), True
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                loss_sum, n = torch.zeros_like(loss_sum), 0
            # Batches are consecutive slices of a fixed order: skipping `first` batches replays the rest.
            train_loader.sampler.set_epoch(epoch, start=first * cfg.train.batch_size)
            decoder.train()
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", leave=False,
                       disable=not progress_enabled())
            for step, batch in enumerate(bar, start=first):
                for index, reason in batch["skipped"]:
                    skips.add(train_recs[index].relpath, reason)
                if "image" in batch:
                    x = to_float(batch["image"], device, cl)
                    idx = batch["index"]
                    try:
                        with autocast(precision, device):
                            if fcache is not None and fcache.has(idx):
                                feats = fcache.get(idx, device, cl)
                            else:
                                with torch.no_grad():
                                    feats = extractor(x)
                                if fcache is not None:
                                    fcache.put(idx, feats)
                            pred = step_decoder(feats)
                            parts = loss_fn(pred, x)  # pixel terms in float32
                        opt.zero_grad(set_to_none=True)
                        scaler.scale(parts["loss"]).backward()
                    except torch.cuda.OutOfMemoryError:
                        raise fail(
                            f"out of GPU memory at batch size {cfg.train.batch_size} (epoch {epoch + 1}, step {step + 1}); "
                            f"try --batch-size {max(1, cfg.train.batch_size // 2)}."
                        ) from None
                    if (step + 1) % check_every == 0 or step == first:
                        value = float(parts["loss"].detach())
                        if not math.isfinite(value):
                            raise nonfinite(value, f"at epoch {epoch + 1}, step {step + 1}")
                        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                    if cfg.train.grad_clip > 0:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.train.grad_clip)
                    if plateau:
                        set_lr(plateau_factor(epoch * steps_per_epoch + step, warmup_steps, decay_start, decay_steps))
                    elif budget_s is not None:  # the schedule follows the time budget instead of the step count
                        set_lr(schedule(epoch * steps_per_epoch + step, spent() / budget_s))
                    scaler.step(opt)
                    scaler.update()
                    if budget_s is None and not plateau:
                        sched.step()
                    if ema is not None:
                        ema.update_parameters(decoder)
                    loss_sum += torch.stack([parts[k].detach() for k in ["loss", *loss_fn.parts]]).double() * len(x)
                    n += len(x)
                    if epoch == 0:
                        mean_sum += x.sum(0, dtype=torch.float64)
                        mean_n += len(x)
                done = step + 1
                if (sig := stop.signal) is not None:
                    save_mid_epoch(epoch, done)
                    raise TrainingInterrupted(
                        f"stopped by {sig} at epoch {epoch + 1}, step {done}; checkpoint saved. "
                        f"Continue with: featinv train --out {out} --resume", sig
                    )
                if every and done % every == 0 and done < steps_per_epoch:
                    save_mid_epoch(epoch, done)
                if budget_s is not None and spent() >= budget_s:
                    out_of_time = True
                    break
            if n == 0:
                raise fail("no training image could be decoded; see the skipped files above.")
            train_parts = (loss_sum / n).tolist()
            train_loss = train_parts[0]
            if not math.isfinite(train_loss):
                raise nonfinite(train_loss, f"in epoch {epoch + 1}")
            # The whole epoch's time, across sessions when it was resumed mid-way, so the
            # images/s of that row counts the same images over the same span.
            train_time = epoch_before + time.perf_counter() - t_epoch
            train_s, in_epoch = spent(), False
            decay_done = plateau and decay_start is not None and (epoch + 1) * steps_per_epoch >= decay_start + decay_steps
            final = epoch == last or out_of_time or decay_done
            mean_image = (mean_sum / max(1, mean_n)).float() if final else None
            ev = evaluate_loader(
                extractor, scored, val_loader, val_recs, device, skips, desc="validate",
                keep=cfg.train.num_save if final else 0, mean_image=mean_image,
                reference_stride=ref_stride if final else None, precision=precision, channels_last=cl,
            )
            improved = ev.metrics["psnr"] > best_psnr
            if improved:
                best_psnr, best_epoch = ev.metrics["psnr"], epoch + 1
            row = {
                "epoch": epoch + 1,
                "train_loss": f"{train_loss:.6g}",
                **{f"train_{k}": f"{v:.6g}" for k, v in zip(loss_fn.parts, train_parts[1:])},
                "val_mse": f"{ev.metrics['mse']:.6g}",
                "val_psnr": f"{ev.metrics['psnr']:.4f}",
                "val_ssim": f"{ev.metrics['ssim']:.5f}",
                "lr": f"{opt.param_groups[0]['lr']:.4g}",
                "epoch_time_s": f"{epoch_before + time.perf_counter() - t_epoch:.2f}",
                "train_images_per_s": f"{n / train_time:.2f}",
            }
            if plateau and decay_start is None and not final:
                decay_start, decay_steps, converged = start_decay(rows + [row], epoch + 1)
            state = checkpoint(epoch + 1, 0)
            if improved:
                atomic_torch_save(state, ckpt_dir / "best.pt")
            save_last(state, ckpt_dir)
            rows.append(row)
            _write_metrics(rows, metrics_path, fields)
            epoch_before = 0.0
            log.info(
                "epoch %d/%d  train loss %.5f  val MSE %.5f  PSNR %.2f dB  SSIM %.4f  (%.1f s)",
                epoch + 1, cfg.train.epochs, train_loss, ev.metrics["mse"], ev.metrics["psnr"], ev.metrics["ssim"],
                time.perf_counter() - t_epoch,
            )
            if out_of_time:
                log.info("time budget of %g minutes spent after %d epoch(s)", cfg.train.minutes, epoch + 1)
                stop_reason = "time budget"
                break
            if decay_done:
                stop_reason = "converged" if converged else "decayed at the budget's end"
                log.info("the final learning-rate decay is done after epoch %d (%s)", epoch + 1, stop_reason)
                break
            if (sig := stop.signal) is not None and epoch < last:
                raise TrainingInterrupted(
                    f"stopped by {sig} after epoch {epoch + 1}; checkpoint saved. "
                    f"Continue with: featinv train --out {out} --resume", sig
                )
            patience = cfg.train.patience
            if patience and not final and epoch + 1 - best_epoch >= patience:
                log.info("early stop: no better val PSNR for %d epochs; keeping epoch %d's weights", patience, best_epoch)
                stopped_early = True
                stop_reason = "patience"
                break

    if stopped_early:
        best = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True)
        decoder.load_state_dict(best["decoder"])
        if ema is not None:
            ema.load_state_dict(best["ema"])
    if ev is None or stopped_early:  # resumed a finished run, or back to the best: score for the outputs below
        ev = evaluate_loader(
            extractor, scored, val_loader, val_recs, device, skips, desc="validate", keep=cfg.train.num_save,
            mean_image=(mean_sum / max(1, mean_n)).float(), reference_stride=ref_stride,
            precision=precision, channels_last=cl,
        )
    export_decoder(scored, extractor, cfg, out)
    if semantic and cfg.backbone.weights != "random":  # the models in memory, not a second load from disk
        write_semantics(Run(out, cfg, extractor, scored, device, {}, precision))
    # Center crops of as many training photos as there are val photos, scored the same way:
    # the gap between the two shows how much the decoder overfits.
    fit_recs = train_recs[: len(val_recs)]
    fit_loader = make_loader(ImageDataset(fit_recs, d.image_size, d.resize, train=False), cfg.train.batch_size,
                             shuffle=False, num_workers=d.num_workers, pin_memory=pin)
    fit = evaluate_loader(extractor, scored, fit_loader, fit_recs, device, SkipLog(), desc="score train photos",
                          precision=precision, channels_last=cl)
    weights_label = extractor.weights_info["weights"]
    title = f"{cfg.backbone.name} ({weights_label} weights), {'+'.join(cfg.backbone.layers)}, {cfg.decoder.name} decoder"
    if cfg.notes:
        title += "\n" + " ".join(cfg.notes)
    report.loss_curve(rows, title, out / "figures" / "loss_curve.png")
    save_pairs(ev, out, title + " — validation images")
    save_extremes(extractor, scored, val_recs, ev.per_image, out, device, d.image_size, d.resize, precision, title=title)
    write_per_image(ev.per_image, out / "results" / "per_image.csv")
    if skips:
        report.write_skipped(skips.rows(), out / "skipped.csv")
        log.warning("%d file(s) skipped; list in %s", len(skips), out / "skipped.csv")
    summary = {
        "featinv_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "precision": precision,
        "channels_last": cl,
        "status": "completed",
        "command": command,
        "notes": cfg.notes,
        "backbone": extractor.weights_info,
        "layers": cfg.backbone.layers,
        "image_size": d.image_size,
        "feature_shapes": {k: list(v) for k, v in shapes.items()},
        "strides": extractor.strides(d.image_size),
        "decoder": cfg.decoder.name,
        "decoder_parameters": count_parameters(decoder),
        "epochs": cfg.train.epochs,
        "epochs_run": len(rows),
        "train_images": sum(r.relpath not in skips.reasons for r in train_recs),  # decoded, not just listed
        "val_images": ev.n_images,
        "skipped_files": len(skips),
        "train_loss": float(rows[-1]["train_loss"]),
        "val": ev.metrics,
        "best_epoch": best_epoch,
        "best_val_psnr": best_psnr,
        "train_eval": {**fit.metrics, "n_images": fit.n_images},
        "schedule": cfg.train.schedule,
        # Only the plateau rule can say a decoder converged; None: the schedule did not check.
        "converged": converged if plateau else None,
        "stop_reason": stop_reason,
        "reference": ev.reference,
        "train_time_s": round(elapsed_before + time.perf_counter() - t0, 2),
        "train_pass_s": round(train_s, 2),
        # training passes only (validation excluded), the backbone's forward pass included
        "train_images_per_s": round(len(rows) * len(train_ds) / train_s, 2) if train_s > 0 else None,
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info(
        "done: val PSNR %.2f dB, SSIM %.4f over %d images (reference: %s). Run directory: %s",
        ev.metrics["psnr"], ev.metrics["ssim"], ev.n_images,
        ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in ev.reference.items()), out,
    )
    return summary


class _CallableModule(types.ModuleType):
    """``featinv.train`` names both this module and its main function; the import system binds the
    module to the package attribute once anything imports it, so the module forwards calls to
    the function and ``featinv.train(cfg, out)`` works either way."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
