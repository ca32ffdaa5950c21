"""The convergence rule, its schedule, and the augmentation and extra-data options."""

import csv
import json
from pathlib import Path

import pytest
import torch

from featinv.schedule import epoch_cost, plateau_factor, plateaued, room_left
from featinv.training import Trainer

from conftest import tiny_config


@pytest.mark.parametrize("history, expected", [
    ([10.0, 12.0, 13.0, 13.05, 13.02, 13.04, 13.01, 13.03, 13.0, 13.02], True),  # flat for eight epochs
    ([10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0], False),                  # still rising
    ([11.0, 11.05, 11.1, 11.15, 11.2, 11.25, 11.3, 11.35], False),              # slow but steady: +0.2 dB a window
    ([13.0, 13.1, 13.0, 13.1, 13.0, 13.6, 13.0, 13.1], False),                  # a lucky epoch holds it off ...
    ([13.0, 13.1, 13.0, 13.1, 13.0, 13.6, 13.0, 13.1, 13.0, 13.1, 13.0, 13.1], True),  # ... for one window at most
    ([12.0, 12.5, 12.9, 13.2, 12.6, 13.3, 13.4, 13.45], False),                 # an unlucky one does not fire it
    ([13.0] * 7, False),                                                        # too short to tell
    ([10.0] * 4 + [10.12] * 4, False),  # a step of 0.12 dB: disjoint windows see all of it (overlapping ones 0.09)
])
def test_plateau_rule(history, expected):
    assert plateaued(history, window=4, min_gain=0.1) is expected


@pytest.mark.parametrize("window", [1, 2, 4, 6])
def test_the_rule_needs_exactly_two_windows(window):
    """Flat values fire the rule as soon as there are two windows of them, not one value later;
    one value fewer cannot tell."""
    assert plateaued([20.0] * (2 * window), window=window, min_gain=0.1)
    assert not plateaued([20.0] * (2 * window - 1), window=window, min_gain=0.1)
    rising = [20.0 + 0.2 * i for i in range(2 * window)]  # +0.2 dB per epoch: a gain of 0.2·window
    assert not plateaued(rising, window=window, min_gain=0.1)


def test_the_rule_reads_through_noise_on_a_recorded_run():
    """The GPU run of bench/results rose about 0.08 dB per epoch from epoch 10 to 19 with noise of a
    few tenths; a rule comparing the best epochs fired at epoch 19 (one good epoch, 15, set the bar),
    the means of windows do not."""
    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu-train-default-h100-metrics.csv"
    psnr = [float(r["val_psnr"]) for r in csv.DictReader(open(path))][:19]  # the epochs before its decay
    assert max(psnr[-4:]) - max(psnr[:-4]) < 0.1  # what the best-of-windows rule saw
    assert not any(plateaued(psnr[:n], window=4, min_gain=0.1) for n in range(1, 20))
    flat = psnr + [psnr[-1]] * 8  # had it stopped rising there, the rule would have said so
    assert plateaued(flat, window=4, min_gain=0.1)


def test_plateau_schedule_warms_up_holds_then_decays_to_zero():
    f = [plateau_factor(s, 10, None, 0) for s in range(30)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and set(f[10:]) == {1.0}
    g = [plateau_factor(s, 10, 40, 20) for s in range(70)]
    assert g[39] == 1.0 and g[40] == 1.0 and g[50] == pytest.approx(0.5) and g[60] == 0.0 and g[69] == 0.0
    assert all(a >= b for a, b in zip(g[40:], g[41:]))


def _scripted(psnrs):
    """A trainer whose validation reports these val PSNRs, epoch after epoch (the rest is real)."""
    calls = iter(psnrs)

    class Scripted(Trainer):
        def validate(self, final):
            ev = super().validate(final)
            ev.metrics["psnr"] = next(calls)
            return ev

    return lambda cfg, out, resume=False: Scripted(cfg, out, resume).fit()


def _lrs(out):
    return [float(r["lr"]) for r in csv.DictReader(open(out / "metrics.csv"))]


def test_room_left_counts_epochs_that_cost_more():
    """100 s of a 160 s budget spent, epochs of 10 s: 6 more epochs fit, 2 that cost three times as
    much (the decay's full-size crops); the epoch cap still bounds both; an unknown cost leaves the cap."""
    assert room_left(10, 40, 160.0, 100.0, 10.0) == 6
    assert room_left(10, 40, 160.0, 100.0, 10.0, cost=3.0) == 2
    assert room_left(10, 12, 160.0, 100.0, 10.0) == 2
    assert room_left(10, 40, None, 100.0, 10.0, cost=3.0) == 30
    assert room_left(1, 40, 160.0, 100.0, None) == 39


def test_an_epochs_cost_leaves_out_the_start_up():
    """The first epoch (start-up) is never the estimate; then the median of the last three."""
    assert epoch_cost([]) is None and epoch_cost([40.0]) is None
    assert epoch_cost([40.0, 5.0]) == 5.0
    assert epoch_cost([40.0, 5.0, 9.0, 4.0, 6.0]) == 6.0  # median of 9, 4, 6
    assert epoch_cost([40.0, 5.0, 7.0]) in (5.0, 7.0)


def _budget_run(samples, out, monkeypatch, first_slow: float, minutes: float, full_size_decay: bool = False):
    """A real Trainer under a scripted clock: a training step costs 1 s on 128-pixel crops (its
    pixels' ratio on the decay's 224-pixel ones), those of the first epoch ``first_slow`` s (its
    start-up); val PSNR keeps rising, so only the budget ends the run."""
    import types

    import featinv.training as T

    clock = {"t": 0.0}
    monkeypatch.setattr(T, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    psnr = iter(10.0 + 0.5 * i for i in range(200))

    class Scripted(Trainer):
        def train_step(self, x, index, step):
            clock["t"] += first_slow if step < self.steps_per_epoch else (x.shape[-1] / 128) ** 2
            return super().train_step(x, index, step)

        def validate(self, final):
            ev = super().validate(final)
            ev.metrics["psnr"] = next(psnr)
            return ev

    cfg = tiny_config(samples / "train", samples / "val", epochs=60, schedule="plateau", minutes=minutes,
                      decay_epochs=3, warmup_epochs=0.0, precise_bn=False)
    cfg.data.max_images, cfg.train.batch_size, cfg.train.num_save = 3, 1, 0
    cfg.data.train_crop, cfg.data.full_size_decay = 128, full_size_decay
    return Scripted(cfg, out).fit()


def test_a_slow_first_epoch_does_not_shorten_a_budgeted_run(samples, tmp_path, monkeypatch):
    """Epochs of 3 s after a first of 24 s (8x: start-up), a 60 s budget: the planner waits for a
    steady epoch, then decays so that the run ends at the budget, decay included (>= 90% of it used).
    Dividing the time so far by the epochs done decided after epoch 1 that one epoch was left."""
    s = _budget_run(samples, tmp_path / "slow", monkeypatch, first_slow=8.0, minutes=1.0)
    rows = list(csv.DictReader(open(tmp_path / "slow" / "metrics.csv")))
    assert s["train_pass_s"] >= 0.9 * 60 and s["stop_reason"] == "decayed at the budget's end"
    assert len(rows) >= 10 and float(rows[-1]["lr"]) < 0.1 * float(rows[0]["lr"])  # the decay ran to its end
    even = _budget_run(samples, tmp_path / "even", monkeypatch, first_slow=1.0, minutes=0.5)
    assert even["train_pass_s"] >= 0.9 * 30 and even["stop_reason"] == "decayed at the budget's end"


def test_a_budgeted_run_with_dearer_decay_epochs_leaves_less_than_an_epoch_over(samples, tmp_path, monkeypatch):
    """Epochs of 3 s, the decay's on full-size crops of 9.2 s, a 60 s budget: the decay starts at the
    last epoch after which waiting would shorten it (>= 90% used; starting it once three decay
    epochs fit, as before, left 8.4 s over: 86%)."""
    s = _budget_run(samples, tmp_path / "r", monkeypatch, first_slow=1.0, minutes=1.0, full_size_decay=True)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert s["train_pass_s"] >= 0.9 * 60 and s["stop_reason"] == "decayed at the budget's end"
    assert len(rows) == 13  # 10 epochs of 3 s, then 3 of 9.2 s


@pytest.mark.parametrize("room, wait, expected", [
    (40, 39, None),     # far from the cap
    (3, 2, 3),          # the epoch cap: its last three epochs
    (5, 3, None),       # a constant-rate epoch more still leaves a whole decay
    (4, 2, 3),          # one more would shorten the decay: now
    (2, 1, 2),          # less than a decay left: what fits
    (0, 0, None),       # nothing fits: the budget's hard stop ends the run
])
def test_the_budget_starts_the_decay_when_waiting_would_shorten_it(room, wait, expected):
    from featinv.schedule import decide_decay

    rising = [10.0 + i for i in range(20)]
    decay = decide_decay(rising, room, window=4, min_gain=0.1, decay_epochs=3, room_after_next=wait)
    assert (decay.epochs if decay else None) == expected and (decay is None or not decay.converged)


def test_full_size_decay_trains_the_decay_epochs_on_full_crops(samples, tmp_path):
    """``data.full_size_decay``: the constant-rate epochs train on the small crops, the final decay's
    on crops of the image size; without it every epoch trains on the small crops."""
    for full, expected in ((True, [64, 64, 224]), (False, [64, 64, 64])):
        sizes: dict[int, set] = {}

        class Recording(Trainer):
            def train_step(self, x, index, step):
                sizes.setdefault(step // self.steps_per_epoch, set()).add(x.shape[-1])
                return super().train_step(x, index, step)

        cfg = tiny_config(samples / "train", samples / "val", epochs=3, decay_epochs=1)
        cfg.data.train_crop, cfg.data.full_size_decay = 64, full
        s = Recording(cfg, tmp_path / f"run-{full}").fit()
        assert [sorted(sizes[e]) for e in range(3)] == [[x] for x in expected]
        assert s["epochs_run"] == 3


def test_a_flat_run_stops_converged_after_its_decay(samples, tmp_path):
    train = _scripted([10.0, 11.0, 11.02, 11.01, 11.03] + [11.0] * 20)
    cfg = tiny_config(samples / "train", samples / "val", epochs=20, schedule="plateau", plateau_epochs=3,
                      plateau_db=0.1, decay_epochs=2, warmup_epochs=0.0)
    cfg.data.max_images, cfg.train.batch_size = 3, 1
    s = train(cfg, tmp_path / "r")
    # plateau seen after epoch 7 (mean of 5..7 is 11.01, as of 2..4), then 2 decay epochs
    assert s["converged"] is True and s["stop_reason"] == "converged" and s["epochs_run"] == 9
    lrs = _lrs(tmp_path / "r")
    assert lrs[:7] == [cfg.train.lr] * 7 and lrs[7] < cfg.train.lr and lrs[8] < 0.1 * cfg.train.lr


def test_a_rising_run_runs_to_its_cap_flagged_not_converged(samples, tmp_path):
    train = _scripted([10.0 + i for i in range(20)])
    cfg = tiny_config(samples / "train", samples / "val", epochs=6, schedule="plateau", plateau_epochs=3,
                      plateau_db=0.1, decay_epochs=2, warmup_epochs=0.0)
    cfg.data.max_images, cfg.train.batch_size = 3, 1
    s = train(cfg, tmp_path / "r")
    assert s["converged"] is False and s["epochs_run"] == 6 and s["stop_reason"] != "converged"
    lrs = _lrs(tmp_path / "r")
    assert lrs[:4] == [cfg.train.lr] * 4 and lrs[-1] < lrs[-2] < cfg.train.lr  # annealed over the last two epochs
    assert lrs[-1] < 0.1 * cfg.train.lr
    assert s["train_eval"]["n_images"] == min(3, s["val_images"])  # scored on as many train photos as possible


def test_a_converged_run_resumed_does_not_train_again(samples, tmp_path):
    train = _scripted([10.0, 10.0, 10.0, 10.0] + [10.0] * 10)
    cfg = tiny_config(samples / "train", samples / "val", epochs=20, schedule="plateau", plateau_epochs=2,
                      plateau_db=0.1, decay_epochs=1, warmup_epochs=0.0)
    cfg.data.max_images = 3
    first = train(cfg, tmp_path / "r")
    assert first["converged"] and first["epochs_run"] == 5  # the rule needs 2 x 2 epochs, then 1 of decay
    again = train(cfg, tmp_path / "r", resume=True)
    assert again["epochs_run"] == 5 and again["converged"] and again["stop_reason"] == "converged"


# ── augmentation and extra training data ──────────────────────────────────────────────────────


def _image(h=256, w=320):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


def test_plain_augmentation_is_a_crop_at_the_images_own_scale():
    from featinv.data import Augment, crop, draws

    x = _image()
    y = crop(x, 224, True, draws(1, 0, 0)[0], Augment())
    windows = [x[:, t:t + 224, l:l + 224] for t in range(33) for l in range(97)]
    assert any(torch.equal(y, w) or torch.equal(y, w.flip(-1)) for w in windows)


def test_random_resized_crops_and_jitter_are_replayable_and_change_the_image():
    from featinv.data import Augment, crop, draws

    x = _image()
    aug = Augment(crop_scale=0.5, color_jitter=0.3)
    a = crop(x, 224, True, draws(5, 0, 0)[0], aug)
    b = crop(x, 224, True, draws(5, 0, 0)[0], aug)
    c = crop(x, 224, True, draws(6, 0, 0)[0], aug)
    assert a.shape == (3, 224, 224) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    # not a plain crop any more: no 224 window of the original (or its mirror) equals it
    windows = [x[:, t:t + 224, l:l + 224] for t in range(0, 33, 4) for l in range(0, 97, 4)]
    assert not any(torch.equal(a, w) or torch.equal(a, w.flip(-1)) for w in windows)
    # evaluation ignores augmentation: always the center crop
    assert torch.equal(crop(x, 224, False, None, aug), x[:, 16:240, 48:272])


def test_extra_data_joins_the_training_set_only(samples, tmp_path):
    from featinv.config import DataConfig
    from featinv.data import SkipLog, split_for_config

    base = DataConfig(data=str(samples / "train"), val_data=str(samples / "val"))
    train0, val0 = split_for_config(base, SkipLog())
    more = DataConfig(data=str(samples / "train"), val_data=str(samples / "val"), extra_data=[str(samples / "val")])
    train1, val1 = split_for_config(more, SkipLog())
    assert len(train1) == len(train0) + len(val0) and [r.relpath for r in val1] == [r.relpath for r in val0]
    assert {r.relpath for r in train1[len(train0):]} == {f"val/{r.relpath}" for r in val0}


def test_new_flags_reach_the_config(samples, tmp_path):
    from featinv.cli import main

    out = tmp_path / "r"
    assert main(["-q", "train", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(out),
                 "--backbone", "resnet50", "--weights", "random", "--layers", "layer3", "--epochs", "1",
                 "--batch-size", "4", "--workers", "0", "--device", "cpu", "--width", "16",
                 "--max-width", "32", "--crop-scale", "0.6", "--color-jitter", "0.1", "--schedule", "plateau",
                 "--plateau-epochs", "5", "--plateau-db", "0.2", "--decay-epochs", "2",
                 "--no-full-size-decay", "--extra-data", str(samples / "val")]) == 0
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["crop_scale"] == 0.6 and cfg["data"]["color_jitter"] == 0.1
    assert cfg["data"]["extra_data"] == [str((samples / "val").resolve())]
    assert cfg["train"]["plateau_epochs"] == 5 and cfg["train"]["plateau_db"] == 0.2 and cfg["train"]["decay_epochs"] == 2
    assert cfg["decoder"]["max_width"] == 32 and cfg["data"]["full_size_decay"] is False
    s = json.loads((out / "summary.json").read_text())
    assert s["train_images"] == 9 + 3  # the nine of --data and the three of --extra-data


@pytest.mark.parametrize("flag, value, words", [
    ("--schedule", "onecycle", "invalid choice"),
    ("--crop-scale", "0", "--crop-scale must be in (0, 1]"),
    ("--color-jitter", "1.5", "--color-jitter must be in [0, 1)"),
    ("--plateau-epochs", "0", "--plateau-epochs must be at least 1"),
])
def test_bad_recipe_values_are_one_sentence(samples, tmp_path, capsys, flag, value, words):
    from featinv.cli import main

    argv = ["train", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(tmp_path / "r"),
            "--weights", "random", flag, value]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    assert words in capsys.readouterr().err


def test_the_batch_size_and_learning_rate_follow_the_device(monkeypatch):
    """Batch 16 on a CPU, 256 on a GPU of 40 GB or more, 128 below; lr 1e-3 × √(global batch / 16);
    values given are kept; an epoch at a large batch makes enough passes for 150 steps."""
    import types

    from featinv.config import RunConfig, default_batch_size, epoch_repeats, resolve_recipe

    cpu = torch.device("cpu")
    assert default_batch_size(cpu) == 16
    for memory, batch in ((141e9, 256), (15e9, 128)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d, m=memory: types.SimpleNamespace(total_memory=m))
        assert default_batch_size(torch.device("cuda")) == batch
    r = resolve_recipe(RunConfig(), cpu)
    assert (r.train.batch_size, r.train.lr) == (16, pytest.approx(1e-3))
    r = resolve_recipe(RunConfig(), torch.device("cuda"))  # the 15 GB GPU of the loop above
    assert (r.train.batch_size, r.train.lr) == (128, pytest.approx(1e-3 * 8 ** 0.5))
    given = RunConfig()
    given.train.batch_size, given.train.lr = 64, 5e-4
    assert resolve_recipe(given, cpu).train.lr == 5e-4
    given.train.lr = 0.0
    assert resolve_recipe(given, cpu, world=4).train.lr == pytest.approx(4e-3)  # global batch 256
    big = resolve_recipe(RunConfig(), cpu)
    big.train.batch_size = 256
    assert epoch_repeats(big, 2437) == 16 and epoch_repeats(big, 45_000) == 1
    assert epoch_repeats(resolve_recipe(RunConfig(), cpu), 900) == 1  # the CPU recipe: one pass
    big.train.epoch_repeats = 3
    assert epoch_repeats(big, 2437) == 3


def test_an_epoch_of_repeats_passes_over_every_photo_that_often(samples, tmp_path):
    """--epoch-repeats 3: each epoch trains on every photo three times, each time with its own crop."""
    seen: list = []

    class Recording(Trainer):
        def train_step(self, x, index, step):
            seen.append((step // self.steps_per_epoch, tuple(index.tolist())))
            return super().train_step(x, index, step)

    cfg = tiny_config(samples / "train", samples / "val", epochs=2, epoch_repeats=3)
    cfg.data.max_images, cfg.train.batch_size, cfg.train.num_save = 3, 1, 0
    s = Recording(cfg, tmp_path / "r").fit()
    per_epoch = [sorted(i for e, b in seen if e == k for i in b) for k in range(2)]
    assert per_epoch == [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 2
    assert s["epoch_repeats"] == 3 and s["epochs_run"] == 2
