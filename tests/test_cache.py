"""Prepared caches: same pixels as decoding, safe tars, resumable, ILSVRC2012 labels mapped right."""

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import featinv.cache as cache_module
from featinv.cache import devkit_to_class_index, prepare, read_cache, read_ground_truth
from featinv.cli import main
from featinv.config import DataConfig
from featinv.data import ImageDataset, SkipLog, find_images, load_image, preprocess, split_for_config
from featinv.utils import FeatinvError

from conftest import SHARED_SAMPLE

DEVKIT_CSV = SHARED_SAMPLE.parent / "ilsvrc2012" / "devkit_ids.csv"


def test_cache_holds_the_same_pixels_as_decoding_the_files(samples, tmp_path):
    info = prepare(samples / "train", tmp_path / "c", size=224, workers=1)
    assert info.n == 9 and all(info.ok)
    arr = cache_module.cache_array(str(tmp_path / "c"))
    for i, rel in enumerate(info.files):
        direct = preprocess(load_image(samples / "train" / rel))
        assert torch.equal(torch.from_numpy(np.array(arr[i])).permute(2, 0, 1), direct), rel
    # and the dataset reads it back as a folder would be read
    recs = find_images(tmp_path / "c").records
    ds = ImageDataset(recs, train=False)
    assert torch.equal(ds[0]["image"], preprocess(load_image(samples / "train" / recs[0].relpath)))


def test_random_crops_from_a_larger_cache(samples, tmp_path):
    prepare(samples / "train", tmp_path / "c256", size=256, workers=0)
    recs = find_images(tmp_path / "c256").records
    ds = ImageDataset(recs, train=True, seed=1)
    a, b = ds[(0, 0)]["image"], ds[(0, 1)]["image"]
    assert a.shape == (3, 224, 224) and not torch.equal(a, b)
    with pytest.raises(FeatinvError, match="--size 288"):
        split_for_config(DataConfig(data=str(tmp_path / "c256"), image_size=288), SkipLog())


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("evil", ["../escape.JPEG", "/tmp/absolute.JPEG", "ok/../../escape.JPEG"])
def test_a_tar_with_unsafe_member_names_is_rejected(samples, tmp_path, evil):
    jpeg = (samples / "val" / "coffee.jpg").read_bytes()
    tar = _tar(tmp_path / "evil.tar", {"fine.JPEG": jpeg, evil: jpeg})
    before = set(tmp_path.parent.rglob("*"))
    with pytest.raises(FeatinvError, match="refusing the tar"):
        prepare(tar, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()
    assert set(tmp_path.parent.rglob("*")) - before == set()


def test_devkit_ids_map_to_torchvision_class_indices():
    table = devkit_to_class_index()
    assert len(table) == 1000
    assert table[490] == ("n01751748", 65)
    assert table[1] == ("n02119789", 278)
    assert sorted(c for _, c in table.values()) == list(range(1000))
    # class index = position of the wnid in sorted order
    wnids = sorted(w for w, _ in table.values())
    assert all(wnids[c] == w for w, c in table.values())
    if DEVKIT_CSV.is_file():
        with open(DEVKIT_CSV, newline="") as f:
            shared = {int(r["ilsvrc2012_id"]): (r["wnid"], int(r["class_index"])) for r in csv.DictReader(f)}
        assert shared == table


def test_fake_validation_tar_lands_each_image_under_its_class(samples, tmp_path):
    photos = sorted((samples / "val").glob("*.jpg"))
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    _tar(tmp_path / "ILSVRC2012_img_val.tar", {n: p.read_bytes() for n, p in zip(names, photos)})
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("490\n1\n1000\n")
    assert main(["-q", "prepare", "--data", str(tmp_path / "ILSVRC2012_img_val.tar"), "--out", str(tmp_path / "c"),
                 "--labels", str(gt), "--workers", "1"]) == 0
    info = read_cache(tmp_path / "c")
    table = devkit_to_class_index()
    assert info.files == names
    assert info.labels == [65, 278, table[1000][1]]
    assert info.classes[65] == "n01751748"
    assert read_ground_truth(gt)[names[0]] == 65
    arr = cache_module.cache_array(str(tmp_path / "c"))
    assert np.array_equal(arr[0], preprocess(load_image(photos[0])).permute(1, 2, 0).numpy())


def test_an_interrupted_prepare_resumes_without_decoding_again(samples, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "CHUNK", 2)
    real = cache_module._decode
    calls = []

    def stop_after_five(item):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(item[0])
        return real(item)

    monkeypatch.setattr(cache_module, "_decode", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        prepare(samples / "train", tmp_path / "c", workers=0)
    done_before = len(calls)
    calls.clear()
    monkeypatch.setattr(cache_module, "_decode", lambda item: (calls.append(item[0]), real(item))[1])
    info = prepare(samples / "train", tmp_path / "c", workers=0)
    assert done_before == 5 and len(calls) == 9 - 5  # only the images not yet written
    arr = cache_module.cache_array(str(tmp_path / "c"))
    for i, rel in enumerate(info.files):
        assert np.array_equal(arr[i], preprocess(load_image(samples / "train" / rel)).permute(1, 2, 0).numpy())


def test_undecodable_files_in_a_cache_are_reported_as_skips(samples, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted((samples / "train").glob("*.jpg"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.jpg").write_text("not a jpeg")
    info = prepare(src, tmp_path / "c", workers=0)
    assert info.ok.count(False) == 1
    skips = SkipLog()
    train, val = split_for_config(DataConfig(data=str(tmp_path / "c"), val_fraction=0.3), skips)
    assert "broken.jpg" in skips.reasons and len(train) + len(val) == 3
    # and as a validation folder too
    skips = SkipLog()
    _, val = split_for_config(DataConfig(data=str(samples / "train"), val_data=str(tmp_path / "c")), skips)
    assert "broken.jpg" in skips.reasons and len(val) == 3


def _feature_cfg(samples, epochs):
    from conftest import tiny_config

    cfg = tiny_config(samples / "train", samples / "val", epochs=epochs)
    cfg.data.augment = False
    cfg.data.max_images = 6
    cfg.train.num_save = 0
    cfg.backbone.layers = ["layer1", "layer2"]
    return cfg


def test_feature_cache_skips_the_backbone_after_epoch_one_and_trains_alike(samples, tmp_path, monkeypatch):
    from featinv.backbones import FeatureExtractor
    from featinv.training import train

    calls = []
    real = FeatureExtractor.forward

    def spy(self, x):
        calls.append(len(x))
        return real(self, x)

    monkeypatch.setattr(FeatureExtractor, "forward", spy)
    cfg = _feature_cfg(samples, epochs=3)
    cfg.train.cache_features = True
    with_cache = train(cfg, tmp_path / "cached")
    n_cached = sum(calls)
    calls.clear()
    cfg.train.cache_features = False
    without = train(cfg, tmp_path / "plain")
    n_plain = sum(calls)
    # the plain run sends 6 training images through the backbone every epoch; the cached one only in epoch 1
    assert n_plain - n_cached == 2 * 6
    files = sorted(p.name for p in (tmp_path / "cached" / "feature_cache").iterdir())
    assert files == ["layer1.f16", "layer2.f16"]
    assert (tmp_path / "cached" / "feature_cache" / "layer1.f16").stat().st_size == 6 * 256 * 56 * 56 * 2
    # each cached row is the backbone's output for its own image (float16: ~1e-3 relative)
    from featinv.data import to_float

    monkeypatch.undo()
    recs, _ = split_for_config(cfg.data, SkipLog())
    ds = ImageDataset(recs, 224, 256, train=False)
    x = to_float(torch.stack([ds[i]["image"] for i in range(len(recs))]), torch.device("cpu"))
    with torch.no_grad():
        want = FeatureExtractor("resnet50", "random", ["layer1", "layer2"], seed=0)(x)
    for layer, f in want.items():
        rows = torch.from_numpy(np.array(np.memmap(tmp_path / "cached" / "feature_cache" / f"{layer}.f16",
                                                   dtype=np.float16, mode="r", shape=(6, *f.shape[1:])))).float()
        for i in range(6):
            assert float((rows[i] - f[i]).norm() / f[i].norm()) < 5e-3, (layer, i)
    # and training read them back: the weights end as the plain run's, up to float16 rounding
    # (measured 0.0015 relative; a cache that returns another image's features: 0.48)
    a = load_file(str(tmp_path / "cached" / "decoder.safetensors"))
    b = load_file(str(tmp_path / "plain" / "decoder.safetensors"))
    for k in b:
        if b[k].is_floating_point():
            assert float((a[k] - b[k]).norm() / (b[k].norm() + 1e-12)) < 0.02, k
    assert abs(with_cache["val"]["psnr"] - without["val"]["psnr"]) < 0.3


def test_feature_cache_refuses_without_disk_space(samples, tmp_path, monkeypatch):
    import shutil

    from featinv.training import train

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    cfg = _feature_cfg(samples, epochs=1)
    cfg.train.cache_features = True
    with pytest.raises(FeatinvError, match=r"needs .* GB .* free"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "feature_cache").exists()


def test_feature_cache_needs_fixed_crops(samples, tmp_path):
    from featinv.training import train

    cfg = _feature_cfg(samples, epochs=1)
    cfg.data.augment = True
    cfg.train.cache_features = True
    with pytest.raises(FeatinvError, match="--no-augment"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated", "meta"])
def test_a_damaged_cache_is_refused_in_one_sentence(samples, tmp_path, capsys, damage):
    import json

    prepare(samples / "val", tmp_path / "c", size=224, workers=1)
    if damage == "truncated":
        pixels = tmp_path / "c" / "images.u8"
        pixels.write_bytes(pixels.read_bytes()[: 224 * 224 * 3 + 100])
        words = "images.u8 holds"
    else:
        meta = json.loads((tmp_path / "c" / "meta.json").read_text())
        meta["n"] = 7
        (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
        words = "does not match"
    code = main(["train", "--data", str(tmp_path / "c"), "--val-data", str(samples / "val"),
                 "--out", str(tmp_path / "r"), "--weights", "random"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "prepare the cache again" in err and "Traceback" not in err
