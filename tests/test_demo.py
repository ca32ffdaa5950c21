"""`featinv demo`: what each depth keeps from the shipped decoders, then a short training run."""

import json

import pytest

import featinv.demo as demo_module
from featinv.cli import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "d"
    result = demo_module.run_demo(out, epochs=2, device="cpu")
    return out, result


def test_demo_shows_every_depth_with_the_shipped_decoders(demo_out, capsys):
    out, result = demo_out
    assert (out / "depths.png").is_file() and (out / "run" / "summary.json").is_file()
    assert [r["stage"] for r in result["depths"]] == ["stage1", "stage2", "stage3", "stage4"]
    assert [r["stride"] for r in result["depths"]] == [4, 8, 16, 32]
    # ResNet-50's ImageNet weights cannot be downloaded here: the offline pretrained backbone is used, said plainly
    assert result["backbone"] == "efficientnet_lite0" and result["weights"] == "imagenet"
    assert "EfficientNet-Lite0" in json.loads((out / "run" / "summary.json").read_text())["notes"][0]


def test_shipped_stage1_decoder_beats_the_x4_thumbnail_on_held_out_photos(demo_out):
    stage1 = demo_out[1]["depths"][0]
    assert stage1["psnr"] > stage1["thumb_psnr"], stage1


def test_without_any_pretrained_weights_the_demo_says_random_loudly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo_module, "imagenet_weights_present", lambda spec: False)
    result = demo_module.run_demo(tmp_path / "d", epochs=1, device="cpu")
    assert result["weights"] == "random" and result["depths"] == []
    assert "RANDOM backbone weights" in capsys.readouterr().out


def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["demo", "--out", str(tmp_path / "mine")]) == 2
    assert "not a featinv demo folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").is_file()
