"""Training-crop sizes at equal training time: what a decoder reaches after M minutes of training
passes when it trains on random crops of N pixels (`--train-crop N`) instead of full 224 crops.

    python bench/crop_screen.py --crops 224 112 64 --minutes 8 --every 2 --out bench-out/pilot-crop/log.jsonl

One decoder per crop size (the default ladder at stride 4 unless `--layers` says otherwise),
the same seed, AdamW at a constant 1e-3 after a warm-up of 1,600 crops, so no schedule or
stopping rule interferes; one after the other, on one machine. Every `--every` minutes of
training passes (scoring excluded) the weights are copied into the same decoder built for 224,
its batch-norm statistics recomputed over 128 training photos' center crops (as `featinv train`
does before each validation), and scored on the 100 val photos at 224. One JSON line per
score, appended to `--out` as it comes, with the load average beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from featinv.backbones import FeatureExtractor
from featinv.config import DataConfig, DecoderConfig
from featinv.data import Augment, ImageDataset, SkipLog, make_loader, split_for_config, to_float
from featinv.decoders import build_decoder
from featinv.evaluate import evaluate_loader
from featinv.training import precise_bn_records, recalibrate_norms


def screen(crop: int, args: argparse.Namespace, out: Path) -> None:
    d = DataConfig(data=args.data, split_file=args.split_file)
    train_recs, val_recs = split_for_config(d, SkipLog())
    device = torch.device("cpu")
    ext = FeatureExtractor(args.backbone, args.weights, args.layers, seed=0).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    options = DecoderConfig().options()  # the package's default decoder
    dec = build_decoder("ladder", ext.feature_shapes(224), 224, **options).to(memory_format=torch.channels_last)
    scored = build_decoder("ladder", ext.feature_shapes(224), 224, **options).to(memory_format=torch.channels_last)
    loader = make_loader(ImageDataset(train_recs, crop, 256, train=True, seed=0, augment=Augment(1.0, 0.0)),
                         args.batch_size, shuffle=True, seed=0, num_workers=1, persistent=True)
    val = make_loader(ImageDataset(val_recs, 224, 256, train=False), 16, shuffle=False, num_workers=1)
    bn = make_loader(ImageDataset(precise_bn_records(train_recs, 128), 224, 256, train=False), 16, shuffle=False,
                     num_workers=1)
    opt = torch.optim.AdamW(dec.parameters(), lr=args.lr)
    warmup = max(1, 1600 // args.batch_size)
    spent, step, epoch, next_score = 0.0, 0, 0, args.every * 60
    while spent < args.minutes * 60:
        loader.sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            t0 = time.perf_counter()
            x = to_float(batch["image"], device, True)
            with torch.no_grad():
                feats = ext(x)
            for g in opt.param_groups:
                g["lr"] = args.lr * min(1.0, (step + 1) / warmup)
            loss = F.mse_loss(dec.train()(feats), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            spent += time.perf_counter() - t0
            done = spent >= args.minutes * 60
            if spent >= next_score or done:
                scored.load_state_dict(dec.state_dict())
                recalibrate_norms(scored, ext, bn, device, "fp32", True)
                ev = evaluate_loader(ext, scored, val, val_recs, device, channels_last=True)
                row = {"crop": crop, "batch": args.batch_size, "minutes": round(spent / 60, 2), "step": step,
                       "images": step * args.batch_size, "epoch": epoch, "val_psnr": round(ev.metrics["psnr"], 3),
                       "val_ssim": round(ev.metrics["ssim"], 4), "load": round(os.getloadavg()[0], 2)}
                print(json.dumps(row), flush=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                next_score += args.every * 60
            if done:
                break


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="bench-out/cache-imagenet-sample")
    p.add_argument("--split-file", default="../shared/data/imagenet-sample/split.csv")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--layers", nargs="+", default=["stage1"])
    p.add_argument("--crops", nargs="+", type=int, default=[224, 112, 64])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=8.0, help="training passes per crop size")
    p.add_argument("--every", type=float, default=2.0, help="minutes of training passes between scores")
    p.add_argument("--out", default="bench-out/crop-screen.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for crop in args.crops:
        screen(crop, args, out)


if __name__ == "__main__":
    main()
