"""End to end on the bundled photos with random weights: train → evaluate → reconstruct."""

import csv
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import featinv
from featinv.cli import main
from featinv.training import Trainer, train

from conftest import assert_same_run, read_rows, resume_counting_steps, tiny_config

RUN_FILES = [
    "config.yaml", "metrics.csv", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
    "decoder.safetensors", "decoder.json", "figures/loss_curve.png", "results/comparison.png",
    "results/per_image.csv", "results/best_worst.png",
] + [f"results/{k}_{i}.png" for k in ("original", "reconstruction") for i in range(3)]


def test_training_writes_every_output(tiny_run):
    for name in RUN_FILES:
        assert (tiny_run / name).is_file(), name
    rows = list(csv.DictReader(open(tiny_run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    s = json.loads((tiny_run / "summary.json").read_text())
    assert s["status"] == "completed" and s["val_images"] == 3 and s["train_images"] == 9
    assert s["backbone"]["weights"] == "random"
    assert {"mean_image", "bicubic_x4"} <= set(s["reference"])
    assert abs(float(rows[-1]["val_psnr"]) - s["val"]["psnr"]) < 1e-3
    # checkpoints hold plain types only
    ckpt = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2


def test_load_run_reproduces_saved_metrics(tiny_run):
    saved = json.loads((tiny_run / "summary.json").read_text())["val"]
    run = featinv.load_run(tiny_run, device="cpu")
    again = featinv.evaluate_run(run, out=tiny_run / "recheck")
    for k in ("mse", "psnr", "ssim"):
        assert again[k] == pytest.approx(saved[k], rel=1e-6, abs=1e-7)


def test_evaluate_and_reconstruct_commands(tiny_run, samples, tmp_path, capsys):
    assert main(["-q", "evaluate", str(tiny_run), "--data", str(samples / "val"), "--out", str(tmp_path / "ev"), "--num-save", "2"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n_images"] == 3 and {"mse", "psnr", "ssim"} <= set(m)
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    assert len(rows) == 3 and sum(float(r["psnr"]) for r in rows) / 3 == pytest.approx(m["psnr"], abs=1e-4)
    for name in ("original_0.png", "reconstruction_1.png", "comparison.png"):
        assert (tmp_path / "ev" / "results" / name).is_file()
    imgs = sorted(str(p) for p in (samples / "val").glob("*.jpg"))[:2]
    assert main(["-q", "reconstruct", str(tiny_run), *imgs, "--out", str(tmp_path / "rec")]) == 0
    assert len(list((tmp_path / "rec").glob("reconstruction_*.png"))) == 2


def interrupted_in_epoch_2(cfg, out) -> Trainer:
    """A trainer that is interrupted (Ctrl-C) when it validates epoch 2: epoch 1's checkpoint stays."""

    class InterruptInEpoch2(Trainer):
        calls = 0

        def validate(self, final):
            InterruptInEpoch2.calls += 1
            if InterruptInEpoch2.calls == 2:
                raise KeyboardInterrupt
            return super().validate(final)

    return InterruptInEpoch2(cfg, out)


def test_resume_continues_from_the_saved_epoch(tmp_path, samples, tiny_run):
    """Interrupt a run in epoch 2, resume it: it restarts at epoch 2 and ends with the same
    weights as the uninterrupted `tiny_run` (same config)."""
    out = tmp_path / "interrupted"

    with pytest.raises(KeyboardInterrupt):
        interrupted_in_epoch_2(tiny_config(samples / "train", samples / "val"), out).fit()
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    before = read_rows(out)
    _, steps = resume_counting_steps(out)
    assert steps == 3  # epoch 2 only: 3 batches of 3
    rows = read_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2] and rows[:1] == before
    assert_same_run(out, tiny_run)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_resumed_run_keeps_its_learning_rate_schedule(tmp_path, samples, schedule):
    """Interrupted after epoch 1 of 3 and resumed, a cosine (or constant) run has the uninterrupted
    run's learning rate in every epoch and ends with its weights: the scheduler's state is restored,
    not restarted (a warm-up over 1.5 epochs, so the constant schedule has a state to lose too)."""
    cfg = tiny_config(samples / "train", samples / "val", epochs=3, schedule=schedule, warmup_epochs=1.5)
    cfg.data.max_images, cfg.train.num_save = 6, 0
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    Trainer(cfg, whole).fit()

    with pytest.raises(KeyboardInterrupt):
        interrupted_in_epoch_2(cfg, cut).fit()
    resume_counting_steps(cut)
    assert [r["lr"] for r in read_rows(cut)] == [r["lr"] for r in read_rows(whole)]
    assert_same_run(cut, whole)


def test_the_mean_image_line_is_the_mean_of_the_training_photos(tiny_run):
    """The mean-image reference of summary.json is the checkpoint's mean training image scored on
    the val photos (the val photos' own mean scores ~1 dB higher on the bundled set)."""
    from featinv import metrics as M
    from featinv.data import ImageDataset, find_images, to_float
    from featinv.rundir import RunDir

    mean = RunDir(tiny_run).mean_image()
    cfg = RunDir(tiny_run).read_config()
    val = find_images(cfg.data.val_data).records
    ds = ImageDataset(val, cfg.data.image_size, cfg.data.resize, train=False)
    x = to_float(torch.stack([ds[i]["image"] for i in range(len(val))]), torch.device("cpu"))
    scores = M.score(mean.expand_as(x).contiguous(), x)
    reference = json.loads((tiny_run / "summary.json").read_text())["reference"]["mean_image"]
    assert float(scores["psnr"].mean()) == pytest.approx(reference["psnr"], abs=1e-4)
    assert float(scores["ssim"].mean()) == pytest.approx(reference["ssim"], abs=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/nonexistent", "--out", "{tmp}/r", "--weights", "random"], "does not exist"),
        (["train", "--data", "{samples}", "--out", "{tmp}/r", "--batch-size", "-1"], "--batch-size"),
        (["train", "--data", "{samples}", "--out", "{tmp}/r", "--epochs", "-1"], "--epochs"),
        (["train", "--data", "{samples}", "--out", "{tmp}/r", "--lr", "-1"], "--lr"),
        (["train", "--out", "{tmp}/none", "--resume"], "no run to resume"),
        (["train", "--data", "{samples}", "--out", "{run}", "--weights", "random"], "already holds a run"),
        (["train", "--data", "{samples}", "--out", "{tmp}/r", "--weights", "random", "--layers", "layer9"], "unknown layer"),
        (["train", "--data", "{samples}", "--out", "{tmp}/r", "--weights", "random", "--train-crop", "98"],
         "--train-crop 98 must be a multiple of the finest tap's stride (4)"),
        (["evaluate", "{tmp}"], "not a featinv run directory"),
    ],
)
def test_user_errors_are_one_sentence_and_exit_2(argv, message, tmp_path, samples, tiny_run, capsys):
    fill = {"tmp": str(tmp_path), "samples": str(samples / "train"), "run": str(tiny_run)}
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("featinv: error:") and message in err[-1]
    assert not any("Traceback" in line for line in err)


def test_console_script_help(capsys):
    # One process for the entry point, each command's help in this one (fewer Python starts).
    r = subprocess.run([sys.executable, "-m", "featinv.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: featinv" in r.stdout
    for command in ("train", "sweep", "invert", "evaluate", "reconstruct", "demo", "prepare", "report", "backbones"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0 and f"usage: featinv {command}" in capsys.readouterr().out, command


NO_TORCH_FOR_HELP = """
import sys
from featinv.cli import main
codes = []
for argv in (["--help"], ["train", "--help"], ["sweep", "--help"], ["invert", "--help"], ["train", "--out", "never-made", "--epochz", "3"]):
    try:
        main(argv)
    except SystemExit as e:
        codes.append(e.code)
print(codes, "torch" in sys.modules)
"""


def test_help_and_a_mistyped_flag_answer_without_importing_torch():
    """The parser is built from the config dataclasses alone: importing torch (and torchvision) took
    8 s of each `featinv train --help` on the project's CPU before anything was printed."""
    r = subprocess.run([sys.executable, "-c", NO_TORCH_FOR_HELP], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0, 2] False"


def _tiny(samples, epochs, **train_kw):
    cfg = tiny_config(samples / "train", samples / "val", epochs=epochs, **train_kw)
    cfg.data.max_images = 3
    cfg.train.num_save = 0
    return cfg


def test_time_budget_ends_training_and_is_recorded(tmp_path, samples):
    s = train(_tiny(samples, epochs=50, minutes=0.0005), tmp_path / "run")  # 30 ms: spent within the first epoch
    assert s["epochs_run"] == 1 and s["status"] == "completed"
    assert 0.03 <= s["train_pass_s"] < s["train_time_s"]


def test_early_stopping_restores_the_best_weights(tmp_path, samples):
    scripted = iter([20.0, 19.0, 18.0, 17.0])  # val PSNR gets worse after epoch 1

    class Worsening(Trainer):
        def validate(self, final):
            ev = super().validate(final)
            ev.metrics["psnr"] = next(scripted)
            return ev

    out = tmp_path / "run"
    s = Worsening(_tiny(samples, epochs=4, patience=1), out).fit()
    assert s["epochs_run"] == 2 and s["best_epoch"] == 1
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    exported = load_file(out / "decoder.safetensors")
    assert best["epoch"] == 1
    assert all(torch.equal(exported[k], v) for k, v in best["decoder"].items())


def test_ema_weights_are_the_ones_scored_and_exported(tmp_path, samples):
    out = tmp_path / "run"
    s = train(_tiny(samples, epochs=2, ema=0.5, grad_clip=1.0), out)  # 2 updates: the first one copies
    # the exported weights score exactly what summary.json reports
    again = featinv.evaluate_run(featinv.load_run(out, device="cpu"), out=out / "recheck", num_save=0)
    for k in ("mse", "psnr", "ssim"):
        assert again[k] == pytest.approx(s["val"][k], rel=1e-6, abs=1e-7)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    exported = load_file(out / "decoder.safetensors")
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert set(ema) == set(exported)
    assert all(torch.equal(exported[k], v) for k, v in ema.items())
    assert any(not torch.equal(ckpt["decoder"][k], v) for k, v in ema.items() if v.is_floating_point())


def test_ema_warms_up_so_a_short_run_averages_its_last_steps():
    """A plain EMA of decay 0.995 drags its first weights along for hundreds of steps; with the
    warm-up, after 45 updates (the demo's run) the average sits near the last weights, and a long
    run averages at the decay it was given."""
    from featinv.training import EMA, ema_decay

    assert ema_decay(0.995, 0) == pytest.approx(0.1)
    assert ema_decay(0.995, 5000) == 0.995
    assert all(ema_decay(0.995, n) <= ema_decay(0.995, n + 1) for n in range(3000))
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, 0.995)
    for step in range(46):  # the weight walks 0, 1, ..., 45; the first update copies it
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update(model)
    assert 38.0 < ema.module.weight.item() < 45.0  # a plain EMA from the copy would sit near 5
    # the value itself, from the documented formula in plain Python: a <- d*a + (1-d)*w
    a = 0.0
    for n, w in enumerate(range(1, 46), start=1):
        d = min(0.995, (1 + n) / (10 + n))
        a = d * a + (1 - d) * w
    assert ema.module.weight.item() == pytest.approx(a, rel=1e-6)


def test_the_ema_moves_one_minus_decay_of_the_way_toward_the_current_weights():
    """By hand: the first update copies 0; the next one, at decay min(0.995, 2/11), moves 9/11 of
    the way toward the current weight 1 (an inverted weight would move 2/11); a constant decay of
    0.5 once warmed up halves the remaining distance at every step."""
    from featinv.training import EMA

    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, 0.995)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema.update(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(9 / 11, rel=1e-6)
    half = EMA(model, 0.5)
    half.update(model)  # copies 1
    with torch.no_grad():
        model.weight.fill_(3.0)
    for _ in range(8):  # updates 1..8 decay at min(0.5, (1+n)/(10+n)); from n = 8 on, 0.5
        half.update(model)
    half.update(model)  # n = 9: decay 0.5 exactly
    before = 3.0 - half.module.weight.item()
    half.update(model)
    assert 3.0 - half.module.weight.item() == pytest.approx(before / 2, rel=1e-5)


def test_the_ema_is_averaged_models_without_a_device_read_per_step():
    """featinv's EMA gives AveragedModel's weights and buffers, step for step, with its state dict
    (checkpoints of either load into the other), counting updates on the host."""
    from torch.optim.swa_utils import AveragedModel

    from featinv.training import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    def reference(averaged, current, n):  # written here, not featinv's: the documented EMA step
        d = min(0.99, (1 + int(n)) / (10 + int(n)))
        for a, c in zip(averaged, current):
            a.copy_(d * a + (1 - d) * c if a.is_floating_point() else c)

    ours, theirs = EMA(model, 0.99), AveragedModel(model, multi_avg_fn=reference, use_buffers=True)
    for _ in range(30):
        model.train()(torch.randn(2, 3, 8, 8))  # moves the batch-norm buffers too
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update(model)
        theirs.update_parameters(model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float()) for k in a)
    fresh = EMA(model, 0.99)
    fresh.load_state_dict(b)
    assert fresh.updates == 30


def test_default_recipe_beats_the_mean_image_on_held_out_photos(tmp_path, samples):
    """The package defaults (decoder, loss, schedule), at tiny scale: a falsifiable check."""
    from featinv.config import RunConfig

    cfg = RunConfig()
    cfg.data.data, cfg.data.val_data, cfg.data.num_workers = str(samples / "train"), str(samples / "val"), 0
    cfg.backbone.weights = "random"  # ImageNet weights cannot be downloaded here
    cfg.train.epochs, cfg.train.batch_size, cfg.train.device, cfg.train.num_save = 8, 3, "cpu", 0
    s = train(cfg, tmp_path / "run")
    assert s["val"]["psnr"] > s["reference"]["mean_image"]["psnr"] + 2.0
    assert s["val"]["ssim"] > s["reference"]["mean_image"]["ssim"]


def test_smaller_training_crops_train_at_their_size_and_score_at_the_image_size(tmp_path, samples):
    """``--train-crop 64``: the optimizer steps see 64-pixel crops, validation and the exported
    decoder work at 224, and the mean-image reference line keeps the image size."""
    seen = {"train": set(), "val": set()}

    class Recording(Trainer):
        def train_step(self, x, index, step):
            seen["train"].add(tuple(x.shape[-2:]))
            return super().train_step(x, index, step)

    cfg = _tiny(samples, epochs=1)
    cfg.data.train_crop = 64
    out = tmp_path / "run"
    trainer = Recording(cfg, out)
    trainer.state.scored.register_forward_hook(  # the EMA copy by default
        lambda m, i, o: None if m.training else seen["val"].add(tuple(o.shape[-2:])))
    s = trainer.fit()
    assert seen == {"train": {(64, 64)}, "val": {(224, 224)}}
    assert s["reference"]["mean_image"]["psnr"] > 5.0
    run = featinv.load_run(out, device="cpu")
    with torch.no_grad():
        assert run.reconstruct(torch.rand(1, 3, 224, 224)).shape == (1, 3, 224, 224)


def test_training_leaves_no_loader_workers_behind(tmp_path, samples):
    """Persistent data-loader workers left to the garbage collector outlive the run; on a GPU
    machine (pinned memory) the interpreter then waits 5 s per worker at exit."""
    import multiprocessing

    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.num_workers = 2  # 9 training photos, batch 3: the loader starts its workers
    before = {p.pid for p in multiprocessing.active_children()}
    train(cfg, tmp_path / "run")
    assert [p.pid for p in multiprocessing.active_children() if p.pid not in before] == []


@pytest.mark.parametrize("precise", [True, False])
def test_batch_norm_statistics_are_those_of_the_training_photos(tmp_path, samples, precise):
    """With precise BN (the default) the exported decoder's first batch norm holds the mean of its
    input over the training photos' center crops; the running average training leaves does not."""
    from featinv.data import ImageDataset, SkipLog, make_loader, split_for_config, to_float

    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.train.precise_bn = precise
    train(cfg, tmp_path / "run")
    run = featinv.load_run(tmp_path / "run", device="cpu")
    bn = next(m for m in run.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs = []
    bn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
    recs, _ = split_for_config(run.config.data, SkipLog())
    with torch.no_grad():
        for batch in make_loader(ImageDataset(recs, train=False), 3, shuffle=False, num_workers=0):
            run.decoder(run.extractor(to_float(batch["image"], run.device)))
    exact = torch.cat(inputs).mean(dim=(0, 2, 3))
    close = torch.allclose(bn.running_mean, exact, rtol=1e-4, atol=1e-5)
    assert close == precise, (bn.running_mean - exact).abs().max()


@pytest.mark.parametrize("images", [2, 0])
def test_each_validation_is_scored_with_statistics_of_training_photos(tmp_path, samples, images):
    """Before each validation but the last, the decoder's batch norms hold the exact mean of their
    input over ``val_bn_images`` evenly spaced training photos (center crops), computed with the
    weights being scored; with 0 they hold training's running averages."""
    from featinv.data import ImageDataset, make_loader, to_float
    from featinv.training import Trainer, precise_bn_records

    seen = []

    class Probe(Trainer):
        def validate(self, final):
            if not final:
                dec = self.state.scored
                bn = next(m for m in dec.modules() if isinstance(m, torch.nn.BatchNorm2d))
                held, inputs = bn.running_mean.clone(), []
                hook = bn.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
                recs = precise_bn_records(self.train_recs, 2)
                d = self.cfg.data
                with torch.no_grad():
                    for batch in make_loader(ImageDataset(recs, d.image_size, d.resize, train=False), 3,
                                             shuffle=False, num_workers=0):
                        dec(self.extractor(to_float(batch["image"], self.device)))
                hook.remove()
                exact = torch.cat(inputs).mean(dim=(0, 2, 3))
                seen.append(torch.allclose(held, exact, rtol=1e-4, atol=1e-5))
            return super().validate(final)

    cfg = tiny_config(samples / "train", samples / "val", epochs=3)
    cfg.train.val_bn_images = images
    Probe(cfg, tmp_path / "run").fit()
    assert seen == [images > 0] * 2


def test_more_epochs_for_a_finished_run_are_refused_in_one_sentence(tiny_run, tmp_path, capsys):
    """A finished run's decay took its learning rate to zero: `--resume --epochs 4` would train
    nothing and leave summary.json saying 4 epochs over 2 rows; it is refused, nothing rewritten."""
    import shutil

    run = tmp_path / "finished"
    shutil.copytree(tiny_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["-q", "train", "--out", str(run), "--resume", "--epochs", "4"]) == 2
    err = capsys.readouterr().err
    assert "already finished after 2 epochs" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_the_training_module_has_one_name_and_the_old_one_warns():
    """`featinv.train` is the function; the module is `featinv.training`; `import featinv.train`
    still works for one version, with a DeprecationWarning that names the new module."""
    code = ("import featinv, featinv.training\n"
            "assert featinv.train is featinv.training.train and not isinstance(featinv.train, type(featinv))\n"
            "import featinv.train")
    r = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True, text=True)
    assert r.returncode != 0 and "DeprecationWarning" in r.stderr and "featinv.training" in r.stderr
    code = "import featinv.train as old, featinv\nprint(callable(featinv.train), old.Trainer.__module__)"
    r = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["True", "featinv.training"], r.stderr


def test_every_epoch_trains_on_its_own_order_and_crops(tmp_path, samples):
    """The trainer moves the sampler to each epoch: the order of the 9 photos and the random crop
    of each photo change from epoch to epoch (against the same crop of pass 0 every epoch)."""
    seen: dict[int, list[tuple[int, torch.Tensor]]] = {}

    class Watching(Trainer):
        def train_step(self, x, index, step):
            epoch = step // self.steps_per_epoch
            seen.setdefault(epoch, []).extend(zip(index.tolist(), x.detach().clone()))
            return super().train_step(x, index, step)

    cfg = tiny_config(samples / "train", samples / "val", epochs=3)
    cfg.train.num_save = 0
    Watching(cfg, tmp_path / "run").fit()
    orders = [[i for i, _ in seen[e]] for e in range(3)]
    assert all(sorted(o) == list(range(9)) for o in orders)
    assert len({tuple(o) for o in orders}) == 3
    crops = [{i: x for i, x in seen[e]} for e in range(3)]
    assert all(not torch.equal(crops[0][i], crops[1][i]) for i in range(9))
