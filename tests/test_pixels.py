"""[0,1] RGB everywhere outside the backbone: a uint8 255 reaches the extractor as exactly 1.0 and
128 as 128/255, through every path that reads images; one photo scores the same either way."""

import csv

import pytest
import torch
from PIL import Image

from featinv.cache import prepare
from featinv.data import ImageDataset, find_images, to_float
from featinv.evaluate import evaluate_run, load_run, reconstruct_files
from featinv.preload import DeviceImages, DeviceLoader
from featinv.probe import load_images

LEVELS = {"white": 255, "gray": 128}


@pytest.fixture(scope="module")
def flat_photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    for name, v in LEVELS.items():
        Image.new("RGB", (300, 260), (v, v, v)).save(root / f"{name}.png")
    return root


def _expected(names):
    """v / 255 in float32, the dtype the extractor reads."""
    return torch.tensor([LEVELS[n] / 255 for n in names], dtype=torch.float32).tolist()


class Seen:
    """What the run's extractor receives, by a forward pre-hook removed on exit."""

    def __init__(self, run):
        self.run, self.inputs = run, []

    def __enter__(self):
        self.handle = self.run.extractor.register_forward_pre_hook(lambda _m, a: self.inputs.append(a[0].detach().clone()))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def levels(self, calls=None):
        """The level of each photo in the first ``calls`` calls (default: all)."""
        x = torch.cat(self.inputs[:calls])
        assert torch.equal(x.amin((1, 2, 3)), x.amax((1, 2, 3)))  # each photo stays flat
        return x.amax((1, 2, 3)).tolist()


def test_evaluate_and_reconstruct_feed_the_extractor_exact_levels(tiny_run, flat_photos, tmp_path):
    run = load_run(tiny_run, device="cpu")
    names = [r.relpath.split(".")[0] for r in find_images(flat_photos).records]
    with Seen(run) as seen:
        evaluate_run(run, data=flat_photos, out=tmp_path / "ev", num_save=0, semantic=False)
    assert seen.levels(calls=1) == pytest.approx(_expected(names), abs=0)  # the originals' batch; then their reconstructions
    files = sorted(flat_photos.glob("*.png"))
    with Seen(run) as seen:
        reconstruct_files(run, files, tmp_path / "rec")
    assert seen.levels() == pytest.approx(_expected([f.stem for f in files]), abs=0)


def test_probe_reads_exact_levels(flat_photos):
    names, x = load_images([flat_photos])
    assert x.dtype == torch.float32
    assert x.amax((1, 2, 3)).tolist() == pytest.approx(_expected(names), abs=0)
    assert x.amin((1, 2, 3)).tolist() == pytest.approx(_expected(names), abs=0)


def test_a_prepared_cache_and_its_preloaded_batches_keep_exact_levels(flat_photos, tmp_path):
    cache = tmp_path / "cache"
    prepare(flat_photos, cache, size=224, workers=0)
    records = find_images(cache).records
    names = [r.relpath.split(".")[0] for r in records]
    items = [ImageDataset(records, train=False)[(i, 0)]["image"] for i in range(len(records))]
    assert all(t.dtype == torch.uint8 for t in items)
    x = to_float(torch.stack(items), torch.device("cpu"))
    assert x.amax((1, 2, 3)).tolist() == pytest.approx(_expected(names), abs=0)
    loader = DeviceLoader(DeviceImages(records, torch.device("cpu")), records, 224, 8, train=False, shuffle=False)
    batch = next(iter(loader))
    y = to_float(batch["image"], torch.device("cpu"))
    assert torch.equal(y, x)


def test_one_photo_scores_the_same_through_evaluate_and_reconstruct(tiny_run, samples, tmp_path):
    photo_dir = tmp_path / "one"
    photo_dir.mkdir()
    src = sorted((samples / "val").glob("*.jpg"))[0]
    (photo_dir / src.name).write_bytes(src.read_bytes())
    run = load_run(tiny_run, device="cpu")
    evaluate_run(run, data=photo_dir, out=tmp_path / "ev", num_save=0, semantic=False)
    reconstruct_files(run, [photo_dir / src.name], tmp_path / "rec")
    a = next(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    b = next(csv.DictReader(open(tmp_path / "rec" / "per_image.csv")))
    for k in ("mse", "psnr", "ssim"):
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6), k
