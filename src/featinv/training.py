"""The training loop in named parts: features from a frozen backbone, a decoder fitted to the [0,1] images.

In the manner of timm: :class:`TrainState` holds everything training changes and its
``state_dict()`` *is* the checkpoint; :class:`Checkpointer` writes it (last, best, mid-epoch,
behind the finite-loss guard); :class:`Trainer` has ``train_step``, ``run_epoch``, ``validate``,
``should_stop`` and ``finish``, and ``fit`` strings them together. The run directory is
:class:`featinv.rundir.RunDir`'s; the schedules and the stopping rule are
:mod:`featinv.schedule`'s pure functions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import dist
from ._version import __version__
from .backbones import FeatureExtractor
from .config import (
    RunConfig, decay_crop_size, diff_configs, epoch_repeats, flag_of, resolve_recipe, train_crop_size, validate_config,
)
from .data import Augment, ImageDataset, ImageRecord, SkipLog, close_loader, make_loader, split_for_config, to_float
from .decoders import build_decoder, count_parameters
from .featurecache import FeatureCache
from .evaluate import (
    Evaluation, Run, combine_evaluations, evaluate_loader, run_title, save_extremes, save_pairs, write_per_image,
    write_semantics,
)
from .figures import loss_curve, write_skipped
from .losses import build_loss
from .preload import PRELOAD_SHARE, DeviceImages, DeviceLoader, preload_blocker, preload_bytes
from .rundir import CHECKPOINT_FORMAT, RunDir
from .schedule import decide_decay, epoch_cost, lr_factor, plateau_factor, room_left
from .tblog import IMAGES as TB_IMAGES, TensorBoardLog
from .utils import (
    FeatinvError, autocast, console_messages, machine_class, progress_enabled, resolve_device, resolve_precision,
)

log = logging.getLogger("featinv")

METRIC_FIELDS = ["epoch", "train_loss", "val_mse", "val_psnr", "val_ssim", "lr", "epoch_time_s", "train_images_per_s"]
# Keys a resumed run may change; anything else must match the saved config.
RESUMABLE_CHANGES = {
    ("train", "epochs"), ("train", "device"), ("train", "checkpoint_every"), ("train", "patience"), ("train", "minutes"),
    ("data", "num_workers"), ("data", "strict"), ("data", "preload"),
}


def metric_fields(parts: list[str]) -> list[str]:
    """metrics.csv columns: the base ones plus ``train_<part>`` for each loss term."""
    return METRIC_FIELDS[:2] + [f"train_{p}" for p in parts] + METRIC_FIELDS[2:]


class TrainingInterrupted(FeatinvError):
    """SIGINT or SIGTERM arrived; a resumable checkpoint was saved."""

    def __init__(self, message: str, signal_name: str = "SIGINT") -> None:
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value


SIGNAL_CODES = {"SIGINT": 1, "SIGTERM": 2}  # the stop signal as a number the ranks can all-reduce
SIGNAL_NAMES = {v: k for k, v in SIGNAL_CODES.items()}


class TrainingFailed(FeatinvError):
    """A failure the run directory records as ``"status": "failed"`` (non-finite loss, out of memory, no images)."""


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


def is_out_of_memory(e: BaseException) -> bool:
    """Whether an error is an out-of-memory: CUDA's has a type, the CPU allocator's is a RuntimeError
    known by its message."""
    if isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return "can't allocate memory" in str(e) or "not enough memory" in str(e)


def check_output_dir(out: Union[str, Path, RunDir], cfg: RunConfig, resume: bool) -> None:
    """A new run needs a folder without a run in it (a run that failed before its first checkpoint
    does not count: there is nothing to resume); a resumed one, the same run's folder."""
    run = out if isinstance(out, RunDir) else RunDir(out)
    if not resume:
        if run.has_config() and (run.has_checkpoint() or run.read_summary().get("status") != "failed"):
            raise FeatinvError(f"{run.path} already holds a run; pass --resume to continue it, or choose another --out.")
        return
    if not run.has_checkpoint():
        raise FeatinvError(f"--resume: {run.path} holds no checkpoint to resume; drop --resume to start a new run there.")
    changed = [k for k in diff_configs(run.read_config().to_dict(), cfg.to_dict()) if k not in RESUMABLE_CHANGES]
    if changed:
        flags = sorted(flag_of(*k) for k in RESUMABLE_CHANGES)
        raise FeatinvError(
            f"--resume: {run.path} holds a different run (settings differ: {', '.join('.'.join(k) for k in changed)}); "
            f"only {', '.join(flags)} may change when resuming."
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ── the state that training changes ─────────────────────────────────────────────────────────


class Clock:
    """Wall time across the sessions of a run: all of it, the training passes, the epoch in progress."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of a resumed run
        self.train_s = 0.0  # training passes of finished epochs (validation excluded), and of a resumed part-epoch
        self.epoch_before = 0.0  # seconds of the epoch in progress spent in an earlier session
        self.t_epoch = time.perf_counter()  # start of the epoch in progress, in this session
        self.in_pass = False  # inside an epoch's training pass

    def start_epoch(self) -> None:
        self.t_epoch, self.in_pass = time.perf_counter(), True

    def epoch_time(self) -> float:
        """The epoch in progress so far, across sessions."""
        return self.epoch_before + time.perf_counter() - self.t_epoch

    def spent(self) -> float:
        """Training-pass seconds so far, the epoch in progress included."""
        return self.train_s + (time.perf_counter() - self.t_epoch if self.in_pass else 0.0)

    def end_training_pass(self) -> float:
        """Close the epoch's training pass; returns its whole time (across sessions)."""
        whole = self.epoch_time()
        self.train_s, self.in_pass = self.spent(), False
        return whole

    def end_epoch(self) -> float:
        """The epoch's whole time, validation included; the next epoch starts from nothing."""
        whole = self.epoch_time()
        self.epoch_before = 0.0
        return whole

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed(), "train_s": self.spent(),
                "epoch_s": self.epoch_time() if self.in_pass else 0.0}

    def load_state_dict(self, d: dict[str, Any], mid_epoch: bool) -> None:
        self.elapsed_before, self.train_s = d["elapsed_s"], d["train_s"]
        self.epoch_before = d.get("epoch_s", 0.0) if mid_epoch else 0.0


@dataclass
class Progress:
    """Where training stands, in plain numbers (and the two running sums)."""

    epoch: int = 0  # epochs done
    step: int = 0  # batches of the next epoch done
    best_psnr: float = -math.inf
    best_epoch: int = 0
    # The plateau schedule: the global step where the final decay began (None: not yet), its
    # length, and whether the stopping rule (not a budget) started it.
    decay_start: Optional[int] = None
    decay_steps: int = 0
    converged: bool = False


class MeanImage:
    """The mean training image (the reference line "predict every photo as the average photo"),
    summed over the first epoch's batches."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.sum = torch.zeros(3, size, size, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        if x.shape[-2:] != self.sum.shape[-2:]:  # --train-crop: the crops, stretched to the image size
            x = F.interpolate(x, size=self.sum.shape[-2:], mode="bilinear", align_corners=False)
        self.sum += x.sum(0, dtype=torch.float64)
        self.n += len(x)

    def totals(self) -> tuple[torch.Tensor, int]:
        """The sum and count over every rank's images (a collective under torchrun: all ranks call it)."""
        return dist.sum_with_count(self.sum, self.n)

    def result(self) -> torch.Tensor:
        total, n = self.totals()
        return (total / max(1, n)).float()


class LossSums:
    """Sums over the epoch in progress: the total loss, then each part."""

    def __init__(self, parts: list[str], device: torch.device) -> None:
        self.parts = parts
        self.sum = torch.zeros(1 + len(parts), dtype=torch.float64, device=device)
        self.n = 0

    def reset(self) -> None:
        self.sum, self.n = torch.zeros_like(self.sum), 0

    def add(self, losses: dict[str, torch.Tensor], k: int) -> None:
        self.sum += torch.stack([losses[p].detach() for p in ["loss", *self.parts]]).double() * k
        self.n += k

    def totals(self) -> tuple[torch.Tensor, int]:
        """The sums and count over every rank (a collective under torchrun)."""
        return dist.sum_with_count(self.sum, self.n)

    def total(self) -> float:
        return float(self.totals()[0][0])


class TrainState:
    """Everything training changes. ``state_dict()`` is the checkpoint (plain types only, loaded
    with weights_only=True); ``load_state_dict()`` restores a run from it."""

    def __init__(self, decoder: nn.Module, ema: Optional[nn.Module], opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 mean: MeanImage, losses: LossSums, fcache: Any, cfg: RunConfig) -> None:
        self.decoder, self.ema, self.opt, self.sched, self.scaler = decoder, ema, opt, sched, scaler
        self.mean, self.losses, self.fcache, self.cfg = mean, losses, fcache, cfg
        self.progress = Progress()
        self.clock = Clock()

    @property
    def scored(self) -> nn.Module:
        """What is evaluated and exported: the EMA weights when --ema is set, else the decoder."""
        return self.ema.module if self.ema is not None else self.decoder

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Under torchrun every rank calls it (the running sums are added over
        ranks; the feature cache's filled rows are agreed); rank 0 writes it."""
        if self.fcache is not None:
            self.fcache.sync()  # rows marked filled below are on disk first, on every rank
        mean_sum, mean_n = self.mean.totals()
        loss_sum, n = self.losses.totals()
        return {
            "format": CHECKPOINT_FORMAT,
            "world_size": dist.current().size,
            **asdict(self.progress),
            "decoder": self.decoder.state_dict(),
            "decoder_spec": self.decoder.spec,
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "feature_filled": self.fcache.filled.clone() if self.fcache is not None else torch.zeros(0, dtype=torch.bool),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "mean_sum": mean_sum.cpu(),
            "mean_n": mean_n,
            "loss_sum": loss_sum.cpu(),
            "n": n,
            "rng": torch.get_rng_state(),
            **self.clock.state_dict(),
            "config": self.cfg.to_dict(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        world = dist.current()
        if ckpt.get("world_size", 1) != world.size:
            raise FeatinvError(
                f"--resume: this run was trained by {ckpt.get('world_size', 1)} process(es) and is resumed by {world.size}; "
                "resume it with the same number of processes (the epoch order is cut by the global batch)."
            )
        if ckpt["decoder_spec"] != self.decoder.spec:
            raise FeatinvError(
                "--resume: the checkpoint was built for another decoder, backbone or layer set "
                f"({ckpt['decoder_spec']['name']} on {', '.join(ckpt['decoder_spec']['shapes'])})."
            )
        self.decoder.load_state_dict(ckpt["decoder"])
        if self.ema is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        # Checkpoints of format 1 (featinv 0.1.0) lack the plateau keys: their defaults apply.
        self.progress = Progress(**{k: ckpt[k] for k in asdict(Progress()) if k in ckpt})
        device = self.mean.sum.device
        if world.main:  # the sums over all ranks; the other ranks add theirs from zero
            self.mean.sum, self.mean.n = ckpt["mean_sum"].to(device), ckpt["mean_n"]
            self.losses.sum, self.losses.n = ckpt["loss_sum"].to(device), ckpt["n"]
        torch.set_rng_state(ckpt["rng"])
        self.clock.load_state_dict(ckpt, mid_epoch=bool(self.progress.step))


class Checkpointer:
    """Writes the state: ``last.pt`` at every epoch end, every ``every`` steps and on a signal,
    ``best.pt`` when val PSNR improves; never weights that a non-finite loss touched."""

    def __init__(self, run: RunDir, state: TrainState, every: int) -> None:
        self.run, self.state, self.every = run, state, every

    def guard(self, where: str) -> None:
        """Between finite-loss checks (every 20 steps on a GPU) a bad step may have gone by."""
        if not math.isfinite(total := self.state.losses.total()):
            raise nonfinite(total, where, self.run)

    def save(self, epoch: int, step: int, best: bool = False) -> None:
        """``epoch`` epochs done, plus ``step`` batches of the next one. Every rank calls it; rank 0 writes."""
        self.state.progress.epoch, self.state.progress.step = epoch, step
        state = self.state.state_dict()
        if dist.current().main:
            if best:
                self.run.save_best(state)
            self.run.save_last(state)
        dist.barrier()  # nobody reads a checkpoint before it is written

    def mid_epoch(self, epoch: int, step: int) -> None:
        self.guard(f"in epoch {epoch + 1} before step {step}")
        self.save(epoch, step)

    def due(self, step: int, steps_per_epoch: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < steps_per_epoch


def nonfinite(value: float, where: str, run: RunDir) -> TrainingFailed:
    return TrainingFailed(
        f"the loss became {value} {where}; training stopped and the last good checkpoint is kept "
        f"in {run.checkpoints}. Try a smaller --lr."
    )


# ── the loop ─────────────────────────────────────────────────────────────────────────────────


class Trainer:
    """One run: built from a config and a run directory (resumed from its checkpoint on request).

    ``signals``: what the loop reads for a stop request after every step and at each epoch's
    end (default: SIGINT/SIGTERM handlers); tests pass their own.
    """

    def __init__(self, cfg: RunConfig, run: Union[RunDir, str, Path], resume: bool = False,
                 command: Optional[str] = None, semantic: bool = True, signals: Optional[StopSignals] = None) -> None:
        self.cfg, self.run = cfg, run if isinstance(run, RunDir) else RunDir(run)
        self.command, self.semantic = command, semantic
        self.tb: Optional[TensorBoardLog] = None  # --log tensorboard, rank 0, opened when the loop starts
        self.signals = signals if signals is not None else StopSignals()
        validate_config(cfg)
        t0 = time.perf_counter()
        self.device = resolve_device(cfg.train.device)
        self.cfg = cfg = resolve_recipe(cfg, self.device, dist.world_from_env().size)  # batch size and lr by the device
        self.world = dist.init(self.device)
        check_output_dir(self.run, cfg, resume)
        dist.barrier()  # every rank has looked before rank 0 writes config.yaml
        seed_everything(cfg.train.seed)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        self._build_data()
        self._build_models()
        self.budget_s = cfg.train.minutes * 60 if cfg.train.minutes else None
        ckpt = self.run.load_checkpoint() if resume else None
        if ckpt is not None:
            self.state.load_state_dict(ckpt)
            self._refuse_more_epochs_of_a_finished_run()  # before config.yaml is rewritten
            log.info("resuming %s at epoch %d, step %d", self.run.path, self.state.progress.epoch + 1, self.state.progress.step)
        self.state.clock.t0 = t0
        self._open_feature_cache(ckpt.get("feature_filled") if ckpt is not None else None)
        self._open_run_dir()
        self.checkpointer = Checkpointer(self.run, self.state, cfg.train.checkpoint_every)
        # Finite-loss checks sync the host (free on the CPU); under torchrun the ranks also agree
        # on stopping (a signal, the budget, a bad loss) at these steps.
        self.check_every = 1 if self.device.type == "cpu" else 20
        self.epoch_complete = True  # the last epoch ran all its steps (not cut by the budget)
        self.pass_times: dict[int, list[float]] = {}  # this session's training passes by crop size (the planner's)

    def _refuse_more_epochs_of_a_finished_run(self) -> None:
        """``--resume --epochs N`` on a run whose schedule already ran to its end (the final decay
        took the learning rate to zero) would train nothing: one sentence instead of a silent no-op."""
        before = self.run.read_config().train.epochs
        reason = self.already_finished()
        if before != self.cfg.train.epochs and reason not in (None, "epoch cap"):
            raise FeatinvError(
                f"--resume --epochs {self.cfg.train.epochs}: {self.run.path} already finished after "
                f"{self.state.progress.epoch} epochs ({reason}); its learning rate has decayed to zero, so more "
                "epochs would not train it. Start a new run (another --out) with the epochs you want."
            )

    # ── building ──
    def _build_data(self) -> None:
        d, t = self.cfg.data, self.cfg.train
        self.skips = SkipLog(strict=d.strict)
        self.train_recs, self.val_recs = split_for_config(d, self.skips)
        self.repeats = epoch_repeats(self.cfg, len(self.train_recs), self.world.size)
        self.images = self._preload()
        self.train_ds, self.train_loader = self._train_data(train_crop_size(self.cfg))
        # Validation is sharded: each rank scores a contiguous block, the rows are gathered.
        self.val_part = [self.val_recs[i] for i in dist.shard(len(self.val_recs), self.world)]
        self.val_loader = self.center_crops(self.val_part, persistent=True)
        self.steps_per_epoch = math.ceil(len(self.train_ds) * self.repeats / (t.batch_size * self.world.size))
        self.decay_loader: Optional[Any] = None  # built when the final decay starts (data.full_size_decay)

    def _preload(self) -> Optional[DeviceImages]:
        """The run's photos on the training device (``data.preload``), or None: the loader reads them."""
        d = self.cfg.data
        if d.preload == "off":
            return None
        records = self.train_recs
        why = preload_blocker(records, Augment(d.crop_scale, d.color_jitter))
        if why is None and preload_blocker(records + self.val_recs, Augment()) is None:
            records = records + self.val_recs  # val too, when it is in a prepared cache of the same size
        if why is None and d.preload == "auto":
            if self.device.type != "cuda":
                return None
            need, total = preload_bytes(records), torch.cuda.get_device_properties(self.device).total_memory
            if need > PRELOAD_SHARE * total:
                log.info("the images take %.1f GB, more than a third of the GPU's %.0f GB: the loader reads them",
                         need / 1e9, total / 1e9)
                return None
        if why is not None:
            if d.preload == "on":
                raise FeatinvError(f"--preload on: {why}; use --preload off or auto.")
            return None
        t0 = time.perf_counter()
        images = DeviceImages(records, self.device)
        log.info("preloaded %d images (%.2f GB) onto %s in %.1f s", len(images.pixels),
                 images.pixels.numel() / 1e9, self.device, time.perf_counter() - t0)
        return images

    def center_crops(self, records: list, persistent: bool = False, sharded: bool = False) -> Any:
        """Batches of ``records``' center crops (validation, precise BN, the train-photo score), from
        the preloaded images when they hold them; ``sharded``: this rank's share of each batch."""
        d, t = self.cfg.data, self.cfg.train
        rank, world = (self.world.rank, self.world.size) if sharded else (0, 1)
        if self.images is not None and self.images.holds(records):
            return DeviceLoader(self.images, records, d.image_size, t.batch_size, train=False, shuffle=False,
                                rank=rank, world=world)
        return make_loader(ImageDataset(records, d.image_size, d.resize, train=False), t.batch_size, shuffle=False,
                           num_workers=d.num_workers, pin_memory=self.device.type == "cuda", persistent=persistent,
                           rank=rank, world=world)

    def _train_data(self, size: int) -> tuple[ImageDataset, Any]:
        """The training photos as ``size``-pixel crops, and their loader (this rank's share)."""
        d, t = self.cfg.data, self.cfg.train
        augment = Augment(d.crop_scale, d.color_jitter)
        ds = ImageDataset(self.train_recs, size, d.resize, train=d.augment, seed=t.seed, augment=augment)
        if self.images is not None:
            return ds, DeviceLoader(self.images, self.train_recs, size, t.batch_size, train=d.augment, shuffle=True,
                                    seed=t.seed, augment=augment, rank=self.world.rank, world=self.world.size,
                                    repeats=self.repeats)
        return ds, make_loader(ds, t.batch_size, shuffle=True, seed=t.seed, num_workers=d.num_workers,
                               pin_memory=self.device.type == "cuda", rank=self.world.rank, world=self.world.size,
                               persistent=True, repeats=self.repeats)

    def _build_models(self) -> None:
        cfg, device, seed = self.cfg, self.device, self.cfg.train.seed
        extractor = FeatureExtractor(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.layers, seed=seed).to(device)
        self.shapes = extractor.feature_shapes(cfg.data.image_size)
        self.ref_stride = min(extractor.strides(cfg.data.image_size).values())
        crop = train_crop_size(cfg)
        if crop != cfg.data.image_size:
            check_train_crop(crop, cfg.data.image_size, self.shapes, extractor.feature_shapes(crop))
        torch.manual_seed(seed)  # the decoder's initial weights do not depend on the backbone's build
        decoder = build_decoder(cfg.decoder.name, self.shapes, cfg.data.image_size, **cfg.decoder.options()).to(device)
        if cfg.train.channels_last:
            extractor = extractor.to(memory_format=torch.channels_last)
            decoder = decoder.to(memory_format=torch.channels_last)
        self.extractor = extractor
        # `decoder` is what is saved (never a wrapper: no `module.` prefixes); `step_decoder` what
        # runs: under torchrun wrapped in DDP (batch norm synchronised on GPUs; per rank on gloo,
        # where SyncBatchNorm does not run), compiled on request.
        self.step_decoder = decoder
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            if device.type == "cuda":
                decoder = nn.SyncBatchNorm.convert_sync_batchnorm(decoder)
            self.step_decoder = DistributedDataParallel(decoder, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.train.compile:
            self.step_decoder = torch.compile(self.step_decoder)
        self.loss_fn = build_loss(cfg.loss, cfg.backbone.name, cfg.backbone.weights, seed, self.extractor).to(device)
        ema = None
        if cfg.train.ema > 0:  # an average of the weights, batch-norm buffers included
            ema = EMA(decoder, cfg.train.ema)
        t = cfg.train
        # fused: one kernel for the whole update on a GPU (no per-tensor launches)
        opt = torch.optim.AdamW(decoder.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                fused=True if device.type == "cuda" else None)
        self.warmup_steps = round(t.warmup_epochs * self.steps_per_epoch)
        self.plateau = t.schedule == "plateau"
        self.schedule = lr_factor(t.epochs * self.steps_per_epoch, self.warmup_steps, "constant" if self.plateau else t.schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.schedule)
        scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.state = TrainState(decoder, ema, opt, sched, scaler, MeanImage(cfg.data.image_size, device),
                                LossSums(self.loss_fn.parts, device), None, cfg)
        log.info(
            "%d train / %d val images; %s (%s weights) layers %s → %s decoder (%.2fM parameters) on %s",
            len(self.train_recs), len(self.val_recs), cfg.backbone.name, extractor.weights_info["weights"],
            "+".join(cfg.backbone.layers), cfg.decoder.name, count_parameters(decoder) / 1e6, device,
        )

    def _open_feature_cache(self, filled: Optional[torch.Tensor]) -> None:
        """The on-disk feature cache (``--cache-features``); ``filled``: its rows a resumed run wrote."""
        if not self.cfg.train.cache_features:
            return
        root, n = self.run.feature_cache, len(self.train_ds)
        if self.world.main:  # one shared cache: rank 0 checks the space and makes the files
            FeatureCache.check_space(root, n, self.shapes)
            self.state.fcache = FeatureCache(root, n, self.shapes, filled)
        dist.barrier()
        if not self.world.main:
            self.state.fcache = FeatureCache(root, n, self.shapes, filled, create=False)

    def _open_run_dir(self) -> None:
        self.fields = metric_fields(self.loss_fn.parts)
        self.rows = [r for r in self.run.read_metrics() if int(r["epoch"]) <= self.state.progress.epoch]
        if self.world.main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self.run.write_config(self.cfg)
            self.run.record_command(self.command)
            self.run.write_metrics(self.rows, self.fields)

    # ── one step, one epoch ──
    def set_lr(self, step: int) -> None:
        """The learning rate of global step ``step``, when the schedule is not the LambdaLR's own."""
        p, t = self.state.progress, self.cfg.train
        if self.plateau:
            factor = plateau_factor(step, self.warmup_steps, p.decay_start, p.decay_steps)
        elif self.budget_s is not None:  # the schedule follows the time budget instead of the step count
            factor = self.schedule(step, self.state.clock.spent() / self.budget_s)
        else:
            return
        for group in self.state.opt.param_groups:
            group["lr"] = t.lr * factor

    def features(self, x: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's maps of ``x``, from the feature cache when it holds them."""
        fcache, cl = self.state.fcache, self.cfg.train.channels_last
        if fcache is not None and fcache.has(index):
            return fcache.get(index, self.device, cl)
        with torch.no_grad():
            feats = self.extractor(x)
        if fcache is not None:
            fcache.put(index, feats)
        return feats

    def train_step(self, x: torch.Tensor, index: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One optimizer step on the [0,1] batch ``x`` at global step ``step``; returns the loss parts."""
        s, t = self.state, self.cfg.train
        try:
            with autocast(self.precision, self.device):
                feats = self.features(x, index)
                given = {"features": feats} if self.loss_fn.feature is not None else {}  # feature consistency reuses them
                parts = self.loss_fn(self.step_decoder(feats), x, **given)  # pixel terms in float32
            s.opt.zero_grad(set_to_none=True)
            s.scaler.scale(parts["loss"]).backward()
        except (MemoryError, RuntimeError) as e:  # CUDA's OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(e):
                raise
            epoch, at = divmod(step, self.steps_per_epoch)
            where = "GPU memory" if isinstance(e, torch.cuda.OutOfMemoryError) else "memory"
            raise TrainingFailed(
                f"out of {where} at batch size {t.batch_size} (epoch {epoch + 1}, step {at + 1}); "
                f"try --batch-size {max(1, t.batch_size // 2)}."
            ) from None
        if t.grad_clip > 0:
            s.scaler.unscale_(s.opt)
            torch.nn.utils.clip_grad_norm_(s.decoder.parameters(), t.grad_clip)
        self.set_lr(step)
        s.scaler.step(s.opt)
        s.scaler.update()
        if self.budget_s is None and not self.plateau:
            s.sched.step()
        if s.ema is not None:
            s.ema.update(s.decoder)
        return parts

    def run_epoch(self, epoch: int, first: int = 0) -> bool:
        """Train epoch ``epoch`` from its batch ``first``. Checkpoints mid-epoch when due, raises
        :class:`TrainingInterrupted` on a signal; returns True when the time budget ran out."""
        from .utils import progress_bar as tqdm

        s, t = self.state, self.cfg.train
        s.clock.start_epoch()
        if first == 0:
            s.losses.reset()
        loader = self.loader_for(epoch)
        # Batches are consecutive slices of a fixed order: skipping `first` global batches replays the rest.
        loader.sampler.set_epoch(epoch, start=first * t.batch_size * self.world.size)
        s.decoder.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", unit="batch", leave=False,
                   disable=not progress_enabled() or not self.world.main)
        for step, batch in enumerate(bar, start=first):
            for index, reason in batch["skipped"]:
                self.skips.add(self.train_recs[index].relpath, reason)
            value = None
            if "image" in batch:
                x = to_float(batch["image"], self.device, t.channels_last)
                parts = self.train_step(x, batch["index"], epoch * self.steps_per_epoch + step)
                if (step + 1) % self.check_every == 0 or step == first or self._agree_due(step + 1):
                    value = float(parts["loss"].detach())
                    bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                s.losses.add(parts, len(x))
                if epoch == 0:  # the reference line's mean image: the first epoch's photos
                    s.mean.add(x)
            done = step + 1
            sig, out_of_time = self.agree(value, epoch, done)
            if sig is not None:
                self.checkpointer.mid_epoch(epoch, done)
                raise TrainingInterrupted(
                    f"stopped by {sig} at epoch {epoch + 1}, step {done}; checkpoint saved. "
                    f"Continue with: featinv train --out {self.run.path} --resume", sig
                )
            if self.checkpointer.due(done, self.steps_per_epoch):
                self.checkpointer.mid_epoch(epoch, done)
            if out_of_time:
                self.epoch_complete = done == self.steps_per_epoch
                return True
        self.epoch_complete = True
        return False

    def crop_of(self, epoch: int) -> int:
        """The training crops' size in epoch ``epoch``: the decay's full-size crops once the plateau
        schedule's final decay has begun (``data.full_size_decay``), else the training crops. The
        decay starts at an epoch boundary, so an epoch never mixes the two."""
        p = self.state.progress
        if p.decay_start is None or epoch * self.steps_per_epoch < p.decay_start:
            return train_crop_size(self.cfg)
        return decay_crop_size(self.cfg)

    def loader_for(self, epoch: int) -> Any:
        """The training loader of epoch ``epoch`` (crops of :meth:`crop_of`'s size)."""
        size = self.crop_of(epoch)
        if size == train_crop_size(self.cfg):
            return self.train_loader
        if self.decay_loader is None:
            log.info("the final decay trains on %d-pixel crops (--no-full-size-decay: on the training crops)", size)
            self.decay_loader = self._train_data(size)[1]
        return self.decay_loader

    def _agree_due(self, done: int) -> bool:
        """Under torchrun: the steps at which the ranks agree on stopping (every ``check_every``,
        before a mid-epoch checkpoint, at the epoch's end)."""
        return self.world.distributed and (
            done % self.check_every == 0 or done == self.steps_per_epoch or self.checkpointer.due(done, self.steps_per_epoch))

    def agree(self, loss: Optional[float], epoch: int, done: int) -> tuple[Optional[str], bool]:
        """After a step: (the signal that asks to stop, whether the time budget is spent), the same
        on every rank; a non-finite ``loss`` on any rank raises on every rank."""
        late = self.budget_s is not None and self.state.clock.spent() >= self.budget_s
        if not self.world.distributed:
            if loss is not None and not math.isfinite(loss):
                raise nonfinite(loss, f"at epoch {epoch + 1}, step {done}", self.run)
            return self.signals.signal, late
        if not self._agree_due(done):
            return None, False
        bad = 0 if loss is None or math.isfinite(loss) else 1 if loss != loss else 2 if loss > 0 else 3
        sig, bad, late = dist.max_over_ranks([SIGNAL_CODES.get(self.signals.signal or "", 0), bad, float(late)])
        if bad:
            raise nonfinite({1: math.nan, 2: math.inf, 3: -math.inf}[int(bad)], f"at epoch {epoch + 1}, step {done}", self.run)
        return SIGNAL_NAMES.get(int(sig)), bool(late)

    def agreed_signal(self) -> Optional[str]:
        """The stop signal, read once; under torchrun, any rank's, on every rank."""
        if not self.world.distributed:
            return self.signals.signal
        return SIGNAL_NAMES.get(int(dist.max_over_ranks([SIGNAL_CODES.get(self.signals.signal or "", 0)])[0]))

    def recalibrate_norms(self, images: int = 0) -> None:
        """Precise BN (:func:`recalibrate_norms`) for the scored decoder over (at most) ``images``
        training photos (0: ``PRECISE_BN_IMAGES``), each rank on its share, the statistics then
        averaged over ranks."""
        t = self.cfg.train
        recs = precise_bn_records(self.train_recs, images or PRECISE_BN_IMAGES)
        # Equal shards: on GPUs the batch norms are synchronised (SyncBatchNorm), so every rank
        # must run as many batches, or the one with an extra batch waits forever.
        recs = recs[: max(self.world.size, len(recs) - len(recs) % self.world.size)]
        loader = self.center_crops(recs, sharded=True)
        norms = recalibrate_norms(self.state.scored, self.extractor, loader, self.device, self.precision, t.channels_last)
        if self.world.distributed:  # each rank saw its share: the mean of the ranks' statistics
            for m in norms:
                for buf in (m.running_mean, m.running_var):
                    buf.copy_(dist.reduce_over_ranks(buf) / self.world.size)

    def validate(self, final: bool) -> Evaluation:
        """Score the val split; the ``final`` pass also keeps pairs and the reference lines."""
        return self.score(final)

    def score(self, final: bool) -> Evaluation:
        """The val split through the scored weights (under torchrun: each rank its shard, then
        every rank holds the rows of all, so all take the same decisions)."""
        t = self.cfg.train
        mean_image = self.state.mean.result() if final else None
        return self.evaluate_part(self.val_loader, self.val_part, self.skips, desc="validate",
                                  keep=t.num_save if final else TB_IMAGES if self.tb else 0, mean_image=mean_image,
                                  reference_stride=self.ref_stride if final else None)

    def evaluate_part(self, loader: Any, records: list, skips: SkipLog, **kw: Any) -> Evaluation:
        """``evaluate_loader`` on this rank's records, combined over ranks."""
        t = self.cfg.train
        if records:
            ev = evaluate_loader(self.extractor, self.state.scored, loader, records, self.device, skips,
                                 precision=self.precision, channels_last=t.channels_last, **kw)
        else:  # more ranks than images
            ev = Evaluation({}, 0, [])
        if not self.world.distributed:
            return ev
        parts = dist.all_gather(Evaluation(ev.metrics, ev.n_images, ev.per_image, ev.reference))
        parts[0] = Evaluation(parts[0].metrics, parts[0].n_images, parts[0].per_image, parts[0].reference,
                              ev.originals if self.world.main else None, ev.reconstructions if self.world.main else None)
        return combine_evaluations([p for p in parts if p.n_images])

    def decay_done(self, epochs_done: int) -> bool:
        p = self.state.progress
        return self.plateau and p.decay_start is not None and epochs_done * self.steps_per_epoch >= p.decay_start + p.decay_steps

    def end_epoch(self, epoch: int, ev: Evaluation, train_time: float, final: bool,
                  train_parts: list[float], n_images: int) -> dict[str, Any]:
        """Record epoch ``epoch`` (``train_parts``: its mean loss, then each term, over ``n_images``):
        best, plateau decision, metrics.csv row, checkpoint."""
        s, p = self.state, self.state.progress
        improved = ev.metrics["psnr"] > p.best_psnr
        if improved:
            p.best_psnr, p.best_epoch = ev.metrics["psnr"], epoch + 1
        row = {
            "epoch": epoch + 1,
            "train_loss": f"{train_parts[0]:.6g}",
            **{f"train_{k}": f"{v:.6g}" for k, v in zip(self.loss_fn.parts, train_parts[1:])},
            "val_mse": f"{ev.metrics['mse']:.6g}",
            "val_psnr": f"{ev.metrics['psnr']:.4f}",
            "val_ssim": f"{ev.metrics['ssim']:.5f}",
            "lr": f"{s.opt.param_groups[0]['lr']:.4g}",
            "epoch_time_s": f"{s.clock.epoch_time():.2f}",
            "train_images_per_s": f"{n_images / train_time:.2f}",
        }
        if self.plateau and p.decay_start is None and not final:
            self.plan_decay(self.rows + [row], epoch + 1)
        # The row first, then the checkpoint that vouches for it: a crash between the two leaves a
        # row the resumed run drops and writes again, never a finished epoch without its row.
        self.rows.append(row)
        if self.world.main:
            self.run.write_metrics(self.rows, self.fields)
        self.checkpointer.save(epoch + 1, 0, best=improved)
        took = s.clock.end_epoch()
        log.info(
            "epoch %d/%d  train loss %.5f  val MSE %.5f  PSNR %.2f dB  SSIM %.4f  (%.1f s)",
            epoch + 1, self.cfg.train.epochs, train_parts[0], ev.metrics["mse"], ev.metrics["psnr"], ev.metrics["ssim"],
            took,
        )
        return row

    def plan_decay(self, history: list[dict[str, Any]], epochs_done: int) -> None:
        """The plateau schedule's decision after an epoch (see :func:`featinv.schedule.decide_decay`)."""
        t, p = self.cfg.train, self.state.progress
        # The ranks decide alike: the slowest rank's clock and estimate.
        known = epoch_cost(self.pass_times.get(train_crop_size(self.cfg), []))
        train_s, per_epoch = dist.max_over_ranks([self.state.clock.train_s, -1.0 if known is None else known])
        # The decay's full-size crops: their own recent epochs, else their pixels' ratio to the training crops'.
        decay_s = epoch_cost(self.pass_times.get(decay_crop_size(self.cfg), []))
        pixels = (decay_crop_size(self.cfg) / train_crop_size(self.cfg)) ** 2
        cost = decay_s / per_epoch if decay_s and per_epoch > 0 else pixels
        known_s = per_epoch if per_epoch > 0 else None
        room = room_left(epochs_done, t.epochs, self.budget_s, train_s, known_s, cost)
        # the same after one more epoch at the constant rate (of known_s seconds)
        wait = room_left(epochs_done + 1, t.epochs, self.budget_s, train_s + (known_s or 0.0), known_s, cost)
        decay = decide_decay([float(r["val_psnr"]) for r in history], room, t.plateau_epochs, t.plateau_db,
                             t.decay_epochs, wait)
        if decay is None:
            return
        if decay.converged:
            log.info("val PSNR gained < %g dB over the last %d epochs: converged; decaying the learning rate "
                     "over %d epoch(s), then stopping", t.plateau_db, t.plateau_epochs, decay.epochs)
        else:
            log.info("the budget leaves %d epoch(s) and val PSNR still rises: decaying the learning rate now; "
                     "the run will be flagged as not converged", decay.epochs)
        p.decay_start, p.decay_steps, p.converged = epochs_done * self.steps_per_epoch, decay.epochs * self.steps_per_epoch, decay.converged

    def should_stop(self, epoch: int, out_of_time: bool) -> Optional[str]:
        """After epoch ``epoch``: the reason to stop (time budget, the schedule's end, patience), None
        to go on; a signal raises :class:`TrainingInterrupted` (the checkpoint is written)."""
        t, p = self.cfg.train, self.state.progress
        last = epoch == t.epochs - 1
        # A decay planned to end with the budget spends it on its last step: it ended the run.
        if self.decay_done(epoch + 1) and (not out_of_time or self.epoch_complete):
            reason = "converged" if p.converged else "decayed at the budget's end"
            log.info("the final learning-rate decay is done after epoch %d (%s)", epoch + 1, reason)
            return reason
        if out_of_time:
            log.info("time budget of %g minutes spent after %d epoch(s)", t.minutes, epoch + 1)
            return "time budget"
        if (sig := self.agreed_signal()) is not None and not last:
            raise TrainingInterrupted(
                f"stopped by {sig} after epoch {epoch + 1}; checkpoint saved. "
                f"Continue with: featinv train --out {self.run.path} --resume", sig
            )
        if t.patience and not last and epoch + 1 - p.best_epoch >= t.patience:
            log.info("early stop: no better val PSNR for %d epochs; keeping epoch %d's weights", t.patience, p.best_epoch)
            return "patience"
        return "epoch cap" if last else None

    def already_finished(self) -> Optional[str]:
        """A resumed run with nothing left to train: why (None: train on)."""
        p = self.state.progress
        if self.budget_s is not None and self.state.clock.train_s >= self.budget_s:
            return "time budget"
        if p.step == 0 and self.decay_done(p.epoch):
            return "converged" if p.converged else "decayed at the budget's end"
        if p.epoch >= self.cfg.train.epochs:
            return "epoch cap"
        return None

    # ── the whole run ──
    def fit(self) -> dict[str, Any]:
        """Train until :meth:`should_stop` says so, then :meth:`finish`; returns the summary."""
        try:
            with self.signals:
                ev, reason = self._loop()
            return self.finish(ev, reason)
        except TrainingFailed as e:
            if self.world.main:
                self.run.record_failure(str(e))
            raise
        finally:
            if self.tb:
                self.tb.close()
            close_loader(self.train_loader)
            close_loader(self.val_loader)
            if self.decay_loader is not None:
                close_loader(self.decay_loader)

    def _loop(self) -> tuple[Optional[Evaluation], str]:
        s, t = self.state, self.cfg.train
        reason = self.already_finished()
        if t.log == "tensorboard" and self.world.main and reason is None:
            self.tb = TensorBoardLog(self.run.path / "tensorboard", first_epoch=s.progress.epoch)
        ev: Optional[Evaluation] = None
        start, first = s.progress.epoch, s.progress.step
        while reason is None:
            epoch = start
            out_of_time = self.run_epoch(epoch, first)
            sums, n = s.losses.totals()  # over every rank, once per epoch
            if n == 0:
                raise TrainingFailed("no training image could be decoded; see the skipped files above.")
            train_parts = (sums / n).tolist()
            if not math.isfinite(train_parts[0]):
                raise nonfinite(train_parts[0], f"in epoch {epoch + 1}", self.run)
            # The whole epoch's time, across sessions when it was resumed mid-way, so the
            # images/s of that row counts the same images over the same span.
            train_time = s.clock.end_training_pass()
            self.pass_times.setdefault(self.crop_of(epoch), []).append(train_time)
            final = epoch == t.epochs - 1 or out_of_time or self.decay_done(epoch + 1)
            if final and t.precise_bn:
                self.recalibrate_norms()
            elif not final and t.val_bn_images:
                # The running averages follow the last few batches: scored with them, val PSNR
                # jumps by tenths of a dB from epoch to epoch, and the stopping rule reads noise.
                self.recalibrate_norms(t.val_bn_images)
            ev = self.validate(final)
            row = self.end_epoch(epoch, ev, train_time, final, train_parts, n)
            if self.tb:
                self.tb.epoch(row, ev.originals, ev.reconstructions)
            reason = self.should_stop(epoch, out_of_time)
            start, first = epoch + 1, 0
        return ev, reason

    def finish(self, ev: Optional[Evaluation], reason: str) -> dict[str, Any]:
        """Back to the best weights after early stopping; export, figures, train-photo score, summary."""
        s = self.state
        if reason == "patience":
            best = self.run.load_best()
            s.decoder.load_state_dict(best["decoder"])
            if s.ema is not None:
                s.ema.load_state_dict(best["ema"])
            # its batch-norm statistics stay those its best score was measured with (no precise BN)
        if ev is None or reason == "patience":  # resumed a finished run, or back to the best
            ev = self.score(final=True)
        fit = self.score_train_photos()
        for reasons in dist.all_gather(self.skips.reasons):  # each rank saw its own batches' files
            self.skips.reasons.update(reasons)
        summary = self.summary(ev, fit, reason)
        if self.world.main:  # only rank 0 writes
            self.export()
            if self.semantic and self.cfg.backbone.weights != "random":  # the models in memory, not a second load
                write_semantics(Run(self.run.path, self.cfg, self.extractor, s.scored, self.device, {}, self.precision))
            self.write_outputs(ev)
            self.run.write_summary(summary)
        dist.barrier()
        log.info(
            "done: val PSNR %.2f dB, SSIM %.4f over %d images (reference: %s). Run directory: %s",
            ev.metrics["psnr"], ev.metrics["ssim"], ev.n_images,
            ", ".join(f"{k} {v['psnr']:.2f} dB" for k, v in ev.reference.items()), self.run.path,
        )
        return summary

    def export(self) -> None:
        """``decoder.safetensors`` + ``decoder.json`` of the scored weights."""
        scored = self.state.scored
        self.run.write_decoder(
            {k: v.detach().cpu().contiguous() for k, v in scored.state_dict().items()},
            {"featinv_version": __version__, "backbone": self.cfg.backbone.name, "layers": self.cfg.backbone.layers,
             "weights": self.extractor.weights_info, "decoder": scored.spec},
        )

    def score_train_photos(self) -> Evaluation:
        """Center crops of as many training photos as there are val photos, scored the same way:
        the gap between the two shows how much the decoder overfits."""
        recs = self.train_recs[: len(self.val_recs)]
        part = [recs[i] for i in dist.shard(len(recs), self.world)]
        return self.evaluate_part(self.center_crops(part), part, SkipLog(), desc="score train photos")

    def write_outputs(self, ev: Evaluation) -> None:
        d, run, title = self.cfg.data, self.run, run_title(self.cfg, self.extractor.weights_info["weights"])
        loss_curve(self.rows, title, run.figures / "loss_curve.png")
        save_pairs(ev, run.path, title + " — validation images")
        save_extremes(self.extractor, self.state.scored, self.val_recs, ev.per_image, run.path, self.device,
                      d.image_size, d.resize, self.precision, title=title)
        write_per_image(ev.per_image, run.per_image_path)
        if self.skips:
            write_skipped(self.skips.rows(), run.skipped_path)
            log.warning("%d file(s) skipped; list in %s", len(self.skips), run.skipped_path)

    def summary(self, ev: Evaluation, fit: Evaluation, reason: str) -> dict[str, Any]:
        cfg, s, p, device = self.cfg, self.state, self.state.progress, self.device
        train_s = s.clock.train_s
        return {
            "featinv_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "precision": self.precision,
            "machine": machine_class(device),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "channels_last": cfg.train.channels_last,
            "status": "completed",
            "command": self.command,
            "notes": cfg.notes,
            "backbone": self.extractor.weights_info,
            "layers": cfg.backbone.layers,
            "image_size": cfg.data.image_size,
            "feature_shapes": {k: list(v) for k, v in self.shapes.items()},
            "strides": self.extractor.strides(cfg.data.image_size),
            "decoder": cfg.decoder.name,
            "decoder_parameters": count_parameters(s.decoder),
            "epochs": cfg.train.epochs,
            "epochs_run": len(self.rows),
            "train_images": sum(r.relpath not in self.skips.reasons for r in self.train_recs),  # decoded, not just listed
            "val_images": ev.n_images,
            "skipped_files": len(self.skips),
            "train_loss": float(self.rows[-1]["train_loss"]),
            "val": ev.metrics,
            "best_epoch": p.best_epoch,
            "best_val_psnr": p.best_psnr,
            "train_eval": {**fit.metrics, "n_images": fit.n_images},
            "schedule": cfg.train.schedule,
            # Only the plateau rule can say a decoder converged; None: the schedule did not check.
            "converged": p.converged if self.plateau else None,
            "stop_reason": reason,
            "reference": ev.reference,
            "train_time_s": round(s.clock.elapsed(), 2),
            "train_pass_s": round(train_s, 2),
            # training passes only (validation excluded), the backbone's forward pass included
            "train_images_per_s": round(len(self.rows) * len(self.train_ds) * self.repeats / train_s, 2) if train_s > 0 else None,
            "batch_size": cfg.train.batch_size,
            "epoch_repeats": self.repeats,
            "preloaded": self.images is not None,
            "peak_memory_mib": peak_memory_mib(device),
        }


def peak_memory_mib(device: torch.device) -> Optional[int]:
    """The process's peak memory so far: allocated on a GPU, resident on the CPU (None: unknown)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20)
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux
    except (ImportError, AttributeError):
        return None


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
    run = RunDir(out)
    # Under torchrun only rank 0 takes the run directory's lock (and writes into it).
    lock = run.lock(break_lock) if dist.world_from_env().main else contextlib.nullcontext()
    with console_messages(verbose), lock:
        return Trainer(cfg, run, resume, command, semantic).fit()


PRECISE_BN_IMAGES = 4096


def check_train_crop(crop: int, image_size: int, shapes: dict[str, tuple[int, ...]],
                     crop_shapes: dict[str, tuple[int, ...]]) -> None:
    """A training crop must be a whole number of the finest tap's cells, so that the decoder's
    output (the finest map's size times its stride) is the crop itself."""
    finest = max(shapes, key=lambda k: shapes[k][1])
    stride = image_size / shapes[finest][1]
    if round(crop_shapes[finest][1] * stride) != crop:
        raise FeatinvError(f"--train-crop {crop} must be a multiple of the finest tap's stride ({stride:g}), "
                           "or 0 for full crops.")


def precise_bn_records(records: Sequence[ImageRecord], n: int = PRECISE_BN_IMAGES) -> list[ImageRecord]:
    """At most ``n`` of ``records``, evenly spaced (a folder sorted by class keeps every class)."""
    return list(records[:: max(1, math.ceil(len(records) / n))])


def ema_decay(decay: float, updates: int) -> float:
    """The EMA's decay after ``updates`` averaging steps: ``min(decay, (1 + n) / (10 + n))``, the
    warm-up of TensorFlow's ExponentialMovingAverage, so a short run (the demo's few dozen steps)
    averages its last steps instead of dragging its first weights along."""
    return min(decay, (1 + updates) / (10 + updates))


def ema_update(decay: float) -> Callable[..., None]:
    """``multi_avg_fn`` for :class:`torch.optim.swa_utils.AveragedModel`: an EMA with :func:`ema_decay`."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: Any) -> None:
        d = ema_decay(decay, int(updates))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():  # batch-norm's step counter: follow the model's
                a.copy_(c)

    return update


class EMA(nn.Module):
    """An exponential moving average of a model's weights and buffers, decayed by :func:`ema_decay`.

    The state dict is :class:`torch.optim.swa_utils.AveragedModel`'s (``module.*``, ``n_averaged``),
    so checkpoints read either way; but the count of updates lives on the host, where
    AveragedModel reads its device tensor every step (a host round-trip per step on a GPU), and
    one fused ``_foreach_lerp_`` averages every floating tensor."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        import copy

        self.module = copy.deepcopy(model)
        self.average = ema_update(decay)
        device = next(iter(model.parameters()), torch.empty(0)).device
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self.updates = 0

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged, current = self._tensors(self.module), self._tensors(model)
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            self.average(averaged, current, self.updates)
        self.updates += 1
        self.n_averaged.add_(1)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # once, on loading
        return result


def recalibrate_norms(model: nn.Module, extractor: nn.Module, loader: Any, device: torch.device,
                      precision: str = "fp32", channels_last: bool = False) -> list[nn.Module]:
    """Recompute ``model``'s batch-norm statistics with its current weights as exact averages over
    ``loader``'s images ("precise BN", Wu & Johnson 2021); returns the batch norms. The running
    averages training leaves behind follow its last few dozen batches: at the end of a converged
    run they moved val PSNR by up to 0.9 dB from one epoch to the next, and recomputing them
    gained 0.7 dB (bench/precise_bn.py)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return norms
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for batch in loader:
            if "image" in batch:
                with autocast(precision, device):
                    model(extractor(to_float(batch["image"], device, channels_last)))
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return norms
