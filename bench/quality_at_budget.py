"""Quality at a fixed wall-clock budget: the original's design against featinv's default.

Both train for the same wall-clock minutes on the train split of the ImageNet sample with the
offline pretrained backbone (efficientnet_lite0 by default), and both are scored on the same val
center crops as [0,1] RGB images:

(a) the original project's loop: JPEG decode per step through torchvision's ImageFolder,
    num_workers=0, batch 8, fp32, forward hooks on the full network, maps concatenated at 7×7
    into the `seed` decoder, Adam 1e-3 at a constant rate, MSE against ImageNet-*normalized*
    targets (its fault, kept: this is what its users got);
(a') with --fixed-targets, the same loop with [0,1] targets: the engineering alone;
(c) `featinv train` with the package defaults and `--minutes` (its schedule follows the budget):
    the same run as bench/quality.py's `all` configuration, so `--c-run bench-out/quality/all`
    reuses one that bench/quality.py trained with the same budget.

The budget counts the training passes (data loading included, validation excluded) of each.

    python bench/quality_at_budget.py --minutes 10
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from quality import DEFAULT_DATA, layers_for, run_config, train_or_reuse  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def original_loop(train_files: list[Path], backbone: str, weights: str, minutes: float, fixed_targets: bool,
                  device: torch.device, seed: int = 0):
    """Train (a) for ``minutes``; returns the backbone (normalizing), decoder and what it did."""
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from featinv.backbones import build_backbone, get_spec
    from featinv.decoders import SeedDecoder

    spec = get_spec(backbone)
    torch.manual_seed(seed)
    model, _ = build_backbone(backbone, weights, seed)
    model = model.to(device).eval()
    captured: dict[str, torch.Tensor] = {}
    for stage, node in spec.taps.items():
        model.get_submodule(node).register_forward_hook(lambda m, i, o, stage=stage: captured.__setitem__(stage, o))
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224, device=device))
    shapes = {k: tuple(v.shape[1:]) for k, v in captured.items()}
    decoder = SeedDecoder(shapes).to(device)
    opt = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    to_backbone = transforms.Normalize(list(spec.mean), list(spec.std))
    imagenet_norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "train" / "all"  # ImageFolder needs a class level
        folder.mkdir(parents=True)
        for f in train_files:
            (folder / f.name).symlink_to(f.resolve())
        loader = DataLoader(torchvision.datasets.ImageFolder(str(folder.parent), transform=tf), batch_size=8,
                            shuffle=True, num_workers=0)
        budget, spent, steps, images, epochs = minutes * 60, 0.0, 0, 0, 0
        t = time.perf_counter()
        while spent < budget:
            epochs += 1
            for x, _ in loader:
                x = x.to(device)
                with torch.no_grad():
                    model(to_backbone(x))
                target = x if fixed_targets else imagenet_norm(x)
                loss = torch.nn.functional.mse_loss(decoder(dict(captured)), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                loss.item()  # the original logged every step
                steps += 1
                images += len(x)
                spent = time.perf_counter() - t
                if spent >= budget:
                    break
    return model, captured, to_backbone, decoder, {"steps": steps, "images": images, "epochs": epochs, "train_s": spent}


def score_original(model, captured, to_backbone, decoder, cfg, device) -> dict[str, float]:
    from featinv.data import ImageDataset, SkipLog, make_loader, split_for_config, to_float
    from featinv.metrics import MeanAccumulator, score

    _, val_recs = split_for_config(cfg.data, SkipLog())
    loader = make_loader(ImageDataset(val_recs, 224, 256, train=False), 16, shuffle=False)
    acc = MeanAccumulator()
    decoder.eval()
    with torch.no_grad():
        for batch in loader:
            x = to_float(batch["image"], device)
            model(to_backbone(x))
            acc.add(score(decoder(dict(captured)).clamp(0, 1), x))
    return acc.result()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the ImageNet sample folder (JPEGs + split.csv)")
    p.add_argument("--split-file", default=None, help="file,split CSV (default: split.csv in --data)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget of each (default 10)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--fixed-targets", action="store_true", help="also run (a'): the original loop with [0,1] targets")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench-out/quality_at_budget")
    p.add_argument("--cache", default=None,
                   help="(c) reads this `featinv prepare --size 256` cache of --data instead of the JPEGs")
    p.add_argument("--c-run", default=None, help="run directory for (c) (default OUT/c); reused if it matches")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from featinv.data import SkipLog, split_for_config
    from featinv.utils import resolve_device

    data = Path(args.data)
    split = args.split_file or str(data / "split.csv")
    if not data.is_dir() or not Path(split).is_file():
        sys.exit(f"{data} (a folder of JPEGs with split.csv) is missing; pass --data and --split-file.")
    device = resolve_device(args.device)
    out = Path(args.out)

    # (c): exactly bench/quality.py's `all` configuration at this budget (the package defaults)
    ns = argparse.Namespace(data=args.cache or str(data), split_file=split, max_images=None, backbone=args.backbone,
                            weights=args.weights, epochs=1000, minutes=args.minutes, device=args.device, set=None)
    cfg = run_config("all", layers_for("all", args.backbone), ns)
    from featinv.config import DataConfig

    # (a) reads the JPEGs themselves; both are scored on the val crops (c) sees
    train_recs, _ = split_for_config(DataConfig(data=str(data.resolve()), split_file=str(Path(split).resolve())), SkipLog())
    _, val_recs = split_for_config(cfg.data, SkipLog())
    train_files = [r.path for r in train_recs]

    rows = []
    variants = [("(a) original loop, normalized targets", False)]
    if args.fixed_targets:
        variants.append(("(a') original loop, [0,1] targets", True))
    for label, fixed in variants:
        logging.info("training %s for %g min", label, args.minutes)
        model, captured, norm, decoder, info = original_loop(train_files, args.backbone, args.weights, args.minutes, fixed, device)
        m = score_original(model, captured, norm, decoder, cfg, device)
        rows.append({"variant": label, **m, **info})
    logging.info("training (c) featinv default for %g min", args.minutes)
    s = train_or_reuse(cfg, Path(args.c_run) if args.c_run else out / "c")
    rows.append({"variant": f"(c) featinv default ({s['decoder']}, {s['precision']})", **s["val"], "epochs": s["epochs_run"],
                 "images": s["epochs_run"] * s["train_images"], "train_s": s["train_pass_s"]})

    print(f"{args.backbone} ({args.weights}); {len(train_recs)} train / {len(val_recs)} val images; "
          f"budget {args.minutes:g} min of training each; device {device}")
    print(f"{'variant':<52} {'val PSNR':>9} {'val SSIM':>9} {'epochs':>7} {'train s':>8}")
    for r in rows:
        print(f"{r['variant']:<52} {r['psnr']:>9.2f} {r['ssim']:>9.3f} {r['epochs']:>7} {r['train_s']:>8.0f}")
    c, a = rows[-1], rows[0]
    print(f"(c) - (a): {c['psnr'] - a['psnr']:+.2f} dB PSNR, {c['ssim'] - a['ssim']:+.3f} SSIM")
    if args.fixed_targets:
        print(f"(c) - (a'): {c['psnr'] - rows[1]['psnr']:+.2f} dB PSNR, {c['ssim'] - rows[1]['ssim']:+.3f} SSIM")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_at_budget.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    from featinv.utils import FeatinvError

    try:
        sys.exit(main())
    except FeatinvError as e:  # a user's mistake: one line, not a traceback
        sys.exit(f"error: {e}")
