import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from featinv.config import DataConfig
from featinv.data import (
    ImageDataset,
    SkipLog,
    collate,
    find_images,
    load_image,
    make_loader,
    preprocess,
    split_for_config,
    split_records,
)
from featinv.utils import FeatinvError


def _rgb(seed=0, size=(300, 260)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_flat_folder_is_searched_recursively_any_case(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    _rgb().save(tmp_path / "a.JPG")
    _rgb().save(tmp_path / "sub" / "b.png")
    _rgb().save(tmp_path / "sub" / "deeper" / "c.WebP")
    _rgb().save(tmp_path / "d.bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    s = find_images(tmp_path)
    assert [r.relpath for r in s.records] == ["a.JPG", "d.bmp", "sub/b.png", "sub/deeper/c.WebP"]
    assert s.classes == [] and all(r.label == -1 for r in s.records)


def test_imagefolder_tree_gets_class_labels(tmp_path):
    for cls in ("n02", "n01"):
        (tmp_path / cls).mkdir()
        _rgb().save(tmp_path / cls / "x.jpeg")
    s = find_images(tmp_path)
    assert s.classes == ["n01", "n02"]
    assert [(r.relpath, r.label) for r in s.records] == [("n01/x.jpeg", 0), ("n02/x.jpeg", 1)]


def test_hash_split_is_deterministic_and_stable_when_files_are_added(tmp_path):
    for i in range(60):
        _rgb(i, (8, 8)).save(tmp_path / f"img{i:03d}.png")
    recs = find_images(tmp_path).records
    train, val = split_records(recs, 0.2)
    assert 3 <= len(val) <= 25 and len(train) + len(val) == 60
    # The listing order does not matter, only each file's path.
    assert {r.relpath for r in split_records(list(reversed(recs)), 0.2)[1]} == {r.relpath for r in val}
    for i in range(60, 120):
        _rgb(i, (8, 8)).save(tmp_path / f"img{i:03d}.png")
    _, val2 = split_records(find_images(tmp_path).records, 0.2)
    old = {r.relpath for r in val}
    assert old <= {r.relpath for r in val2}  # no old file changed sides
    assert {r.relpath for r in val2} - old  # and some new ones joined val


@pytest.mark.parametrize(
    "mode",
    ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"],
)
def test_every_mode_decodes_to_rgb(tmp_path, mode):
    base = _rgb(1, (240, 230))
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        img = Image.fromarray(arr)
        assert img.mode == "I;16"
        path = tmp_path / "x.png"
    elif mode == "CMYK":
        img, path = base.convert("CMYK"), tmp_path / "x.jpg"
    else:
        img, path = base.convert(mode), tmp_path / "x.png"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (240, 230)
    got = np.asarray(out)
    if mode == "I;16":  # scaled by the 16-bit range, not clipped at 255
        assert np.array_equal(got[..., 0], np.asarray(base.convert("L")))
    elif mode == "P":  # the palette's colours, pixel for pixel
        assert np.array_equal(got, np.asarray(img.convert("RGB")))
    elif mode == "LA":  # opaque gray: the gray value in every channel
        assert all(np.array_equal(got[..., c], np.asarray(base.convert("L"))) for c in range(3))


def _smooth(size=(240, 230)) -> Image.Image:
    """Gradients, so that a JPEG's loss stays small against the differences a bug makes."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h) + 64], -1).astype(np.uint8))


def test_a_cmyk_jpeg_keeps_its_colours(tmp_path):
    base = _smooth()
    base.convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    err = np.abs(np.asarray(load_image(tmp_path / "c.jpg"), dtype=np.float32) - np.asarray(base, dtype=np.float32))
    assert err.mean() < 3.0  # inverted channels or a dropped K would be off by ~100


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    img.save(tmp_path / "t.png")
    assert load_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = _rgb(2, (300, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    img.save(tmp_path / "r.png", exif=exif)  # PNG: lossless, so pixels compare exactly
    out = np.asarray(load_image(tmp_path / "r.png"))
    assert out.shape == (300, 240, 3)
    assert np.array_equal(out, np.rot90(np.asarray(img), k=-1))  # clockwise, as a viewer shows it


def test_preprocess_takes_the_center_crop():
    img = _rgb(5, (320, 256))  # short side already 256: no resize, so the crop is a plain slice
    x = preprocess(img, image_size=224, resize=256)
    assert torch.equal(x, torch.from_numpy(np.array(img)[16:240, 48:272]).permute(2, 0, 1))


def test_preprocess_center_crops_and_upscales_small_images():
    small = _rgb(3, (60, 40))
    x = preprocess(small)
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8
    big = _rgb(4, (640, 480))
    assert preprocess(big).shape == (3, 224, 224)


def test_training_crops_replay_from_seed_epoch_and_index(samples):
    recs = find_images(samples / "train").records
    ds = ImageDataset(recs, train=True, seed=5)
    a, b = ds[(2, 7)]["image"], ds[(2, 7)]["image"]
    c = ds[(2, 8)]["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    val = ImageDataset(recs, train=False)
    assert torch.equal(val[(2, 0)]["image"], val[(2, 9)]["image"])


def test_undecodable_files_are_skipped_with_one_warning_each(tmp_path, samples, caplog):
    for p in sorted((samples / "train").glob("*.jpg"))[:4]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    good = (samples / "val" / "coffee.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 3])
    skips = SkipLog()
    with caplog.at_level(logging.WARNING, logger="featinv"):
        train, val = split_for_config(DataConfig(data=str(tmp_path), val_fraction=0.3), skips)
        # Header-valid but truncated: found only when decoding, reported by the loader's collate.
        loader = make_loader(ImageDataset(train + val), batch_size=8, shuffle=False, num_workers=0)
        for batch in loader:
            for index, reason in batch["skipped"]:
                skips.add((train + val)[index].relpath, reason)
            for index, reason in batch["skipped"]:  # a second report of the same file is silent
                skips.add((train + val)[index].relpath, reason)
    assert set(skips.reasons) == {"text.jpg", "empty.png", "truncated.jpg"}
    named = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(named) == 3


def test_collate_keeps_good_items_and_lists_failures():
    x = torch.zeros(3, 4, 4, dtype=torch.uint8)
    b = collate([{"index": 0, "image": x, "label": -1}, {"index": 1, "error": "bad"}])
    assert b["image"].shape == (1, 3, 4, 4) and b["skipped"] == [(1, "bad")]


def test_folder_without_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "a.jpg").write_text("nope")
    with pytest.raises(FeatinvError, match="no usable training images"):
        split_for_config(DataConfig(data=str(tmp_path)), SkipLog())
    with pytest.raises(FeatinvError, match="does not exist"):
        find_images(tmp_path / "missing")


def test_split_file_gives_a_fixed_split(tmp_path):
    for i in range(6):
        _rgb(i, (8, 8)).save(tmp_path / f"img{i}.png")
    (tmp_path / "split.csv").write_text("file,split\nimg0.png,val\nimg1.png,val\nimg2.png,train\nimg3.png,train\n")
    train, val = split_for_config(DataConfig(data=str(tmp_path), split_file=str(tmp_path / "split.csv")), SkipLog())
    assert [r.relpath for r in train] == ["img2.png", "img3.png"]  # unlisted files are left out
    assert [r.relpath for r in val] == ["img0.png", "img1.png"]
    (tmp_path / "bad.csv").write_text("file,split\nimg0.png,test\n")
    with pytest.raises(FeatinvError, match="train or val"):
        split_for_config(DataConfig(data=str(tmp_path), split_file=str(tmp_path / "bad.csv")), SkipLog())


def test_each_pass_has_its_own_shuffled_order():
    """A permutation per (seed, pass): the passes of one epoch (repeats), the epochs, and the seeds
    all differ, and each pass visits every image once."""
    from featinv.data import EpochSampler

    n = 20
    s = EpochSampler(n, shuffle=True, seed=3, repeats=2)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        items = list(s)
        assert [p for _, p in items] == [2 * epoch] * n + [2 * epoch + 1] * n  # its passes, in turn
        orders += [[i for i, _ in items[:n]], [i for i, _ in items[n:]]]
    assert all(sorted(o) == list(range(n)) for o in orders)
    assert len({tuple(o) for o in orders}) == len(orders)  # six passes, six orders
    other = EpochSampler(n, shuffle=True, seed=4, repeats=2)
    assert [i for i, _ in other][:n] != orders[0]
    plain = EpochSampler(n, shuffle=False)
    plain.set_epoch(5)
    assert list(plain) == [(i, 5) for i in range(n)]


def test_to_float_maps_uint8_255_to_exactly_one():
    """Pixels are [0,1]: 0 → 0, 255 → 1.0 exactly, v → v/255 (the path of training, evaluation
    and preloaded batches)."""
    from featinv.data import to_float

    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    y = to_float(x, torch.device("cpu"))
    assert y.dtype == torch.float32 and y.max().item() == 1.0 and y.min().item() == 0.0
    assert torch.equal(y[0, 0].flatten(), torch.tensor([v / 255 for v in range(256)], dtype=torch.float32))
