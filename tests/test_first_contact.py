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
def test_a_mistyped_flag_gets_the_sub_commands_usage_and_a_suggestion(samples, tmp_path, capsys, flag, suggestion):
    code, err = _run(["train", "--data", str(samples), "--out", str(tmp_path / "r"), flag, "3"], capsys)
    assert code == 2
    assert "usage: featinv train" in err and f"did you mean {suggestion}?" in err
    assert not (tmp_path / "r").exists()  # `--epoch` is not taken for `--epochs`


def test_the_python_api_talks_when_asked_and_is_silent_otherwise(samples, tmp_path, capfd):
    import logging

    from featinv.train import train
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


def test_single_runs_and_evaluate_score_semantics_with_pretrained_weights(samples, tmp_path, capsys, tiny_run):
    out = tmp_path / "lite0"
    argv = _tiny_train(samples, out, "--backbone", "efficientnet_lite0")
    argv[argv.index("--weights") + 1] = "imagenet"
    assert _run(argv, capsys)[0] == 0
    sem = json.loads((out / "semantic.json").read_text())
    assert 0 <= sem["top1_agreement"] <= sem["top5_agreement"] <= 1 and sem["n_images"] == 3
    assert _run(["-q", "evaluate", str(out), "--out", str(tmp_path / "ev")], capsys)[0] == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["top1_agreement"] == sem["top1_agreement"]  # the same val photos, the same decoder
    page = tmp_path / "r.html"
    assert _run(["-q", "report", str(out), str(tiny_run), "--out", str(page)], capsys)[0] == 0
    text = page.read_text()
    assert f"{sem['top1_agreement']:.2f} / {sem['top5_agreement']:.2f}" in text
    assert "n/a (random weights)" in text  # tiny_run: random weights, said so instead of a bare dash
