"""The shipped decoders by name: each name loads the decoder of its own stage."""

import csv

import pytest

from featinv.backbones import get_spec
from featinv.cli import main
from featinv.evaluate import load_run, reconstruct_files
from featinv.pretrained import run_or_shipped, shipped_decoders

STAGES = ["stage1", "stage2", "stage3", "stage4"]


@pytest.mark.parametrize("name", STAGES + [f"efficientnet_lite0-{s}" for s in STAGES])
def test_each_shipped_name_loads_the_decoder_of_its_stage(name):
    stage = name.rsplit("-", 1)[-1]
    path = run_or_shipped(name)
    assert path == shipped_decoders()[stage] and path.name == f"efficientnet_lite0-{stage}"
    run = load_run(path, device="cpu")
    spec = get_spec(run.config.backbone.name)
    assert [spec.stage_of(layer) for layer in run.config.backbone.layers] == [stage]


def test_reconstruct_stage3_uses_the_stage3_decoder(samples, tmp_path, capsys):
    photo = sorted((samples / "val").glob("*.jpg"))[0]
    assert main(["-q", "reconstruct", "stage3", str(photo), "--out", str(tmp_path / "cli")]) == 0
    reconstruct_files(shipped_decoders()["stage3"], [photo], tmp_path / "direct")
    reconstruct_files(shipped_decoders()["stage2"], [photo], tmp_path / "stage2")
    psnr = {d: float(next(csv.DictReader(open(tmp_path / d / "per_image.csv")))["psnr"]) for d in ("cli", "direct", "stage2")}
    assert psnr["cli"] == psnr["direct"] and psnr["cli"] != psnr["stage2"]
