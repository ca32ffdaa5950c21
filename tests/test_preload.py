"""Images preloaded on the training device (``--preload``): batches made there, as the loader's."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from featinv.cache import prepare
from featinv.data import ImageDataset, find_images, make_loader
from featinv.images import Augment
from featinv.preload import DeviceImages, DeviceLoader, jitter, preload_blocker


@pytest.fixture(scope="module")
def cache(tmp_path_factory, samples):
    out = tmp_path_factory.mktemp("preload") / "cache"
    prepare(samples / "train", out, size=96, workers=0)
    return find_images(out).records


def _sources(records):
    from featinv.cache import cache_array

    return [torch.from_numpy(cache_array(str(r.path))[r.cache_index].copy()).permute(2, 0, 1) for r in records]


def _find(crop, source, size):
    """Where ``crop`` sits in ``source`` (top, left, flipped), or None."""
    for flipped in (False, True):
        c = crop.flip(-1) if flipped else crop
        for top in range(source.shape[1] - size + 1):
            for left in range(source.shape[2] - size + 1):
                if torch.equal(source[:, top : top + size, left : left + size], c):
                    return top, left, flipped
    return None


@pytest.mark.parametrize("jitter_strength", [0.0, 0.3])
def test_batches_are_the_loaders_batches(cache, jitter_strength):
    """The same seed gives the loader's crops, flips and jitter, batch for batch (uint8 B×3×S×S in
    channels-last memory), over epochs of two passes; each crop a window (or its mirror) of its image."""
    augment = Augment(color_jitter=jitter_strength)
    images = DeviceImages(cache, torch.device("cpu"))
    loader = DeviceLoader(images, cache, 64, batch_size=4, train=True, shuffle=True, seed=1, augment=augment, repeats=2)
    ref = make_loader(ImageDataset(cache, 64, 96, train=True, seed=1, augment=augment), 4, shuffle=True, seed=1,
                      num_workers=0, repeats=2)
    sources = _sources(cache)
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        ref.sampler.set_epoch(epoch)
        got, want = list(loader), list(ref)
        assert [b["index"].tolist() for b in got] == [b["index"].tolist() for b in want]
        for a, b in zip(got, want):
            x = a["image"]
            assert x.dtype == torch.uint8 and x.shape[1:] == (3, 64, 64)
            assert x.is_contiguous(memory_format=torch.channels_last)
            assert (x.int() - b["image"].int()).abs().max() <= (1 if jitter_strength else 0)
    if not jitter_strength:
        flips = [_find(crop, sources[i], 64)[2] for crop, i in zip(x, a["index"].tolist())]
        assert flips  # found in its own image


def test_crops_have_the_loaders_statistics(cache):
    """Over many epochs the mean crop of each image is the loader's, as close as two seeds of the
    loader are to each other (center crops sit 8x further away: a bias of the offsets shows), and as
    left-right symmetric (a flip that never happens shows)."""
    images = DeviceImages(cache, torch.device("cpu"))
    loader = DeviceLoader(images, cache, 64, batch_size=9, train=True, shuffle=False, seed=0)
    epochs = 100

    def mean_crops(batches):
        total = torch.zeros(len(cache), 3, 64, 64)
        for index, x in batches:
            total[index] += x.float()
        return total / epochs

    def device_batches():
        for e in range(epochs):
            loader.sampler.set_epoch(e)
            yield from ((b["index"], b["image"]) for b in loader)

    def loader_batches(seed):
        ds = ImageDataset(cache, 64, 96, train=True, seed=seed)
        for e in range(epochs):
            yield from ((i, ds[(i, e)]["image"]) for i in range(len(cache)))

    a, b, c = mean_crops(device_batches()), mean_crops(loader_batches(0)), mean_crops(loader_batches(7))
    assert (a - b).abs().mean() < 1.5 * (b - c).abs().mean()
    assert (a - a.flip(-1)).abs().mean() < 1.5 * (b - b.flip(-1)).abs().mean()


def test_the_same_seed_gives_the_same_crops_and_a_resumed_epoch_replays_them(cache):
    images = DeviceImages(cache, torch.device("cpu"))

    def batches(seed, start=0, repeats=1):
        loader = DeviceLoader(images, cache, 64, batch_size=2, train=True, shuffle=True, seed=seed,
                              augment=Augment(color_jitter=0.3), repeats=repeats)
        loader.sampler.set_epoch(2, start=start)
        return torch.cat([b["image"] for b in loader])

    full = batches(0)
    assert torch.equal(full, batches(0))
    assert not torch.equal(full, batches(1))
    assert torch.equal(full[4:], batches(0, start=4))  # a run resumed after 2 steps of batch 2
    twice = batches(0, repeats=2)
    assert len(twice) == 2 * len(full) and not torch.equal(twice[: len(full)], twice[len(full) :])


def test_center_crops_are_the_loaders(cache):
    images = DeviceImages(cache, torch.device("cpu"))
    loader = DeviceLoader(images, cache, 64, batch_size=4, train=False, shuffle=False)
    ref = make_loader(ImageDataset(cache, 64, 96, train=False), 4, shuffle=False, num_workers=0)
    for a, b in zip(loader, ref):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])


def test_batched_jitter_is_torchvisions(cache):
    x = torch.stack(_sources(cache))[:, :, :32, :32]
    factors = torch.tensor([[0.7, 1.3, 0.8], [1.2, 0.75, 1.25]]).repeat(5, 1)[: len(x)]
    got = jitter(x, factors)
    for img, f, g in zip(x, factors.tolist(), got):
        want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, f[0]), f[1]), f[2])
        assert (want.int() - g.int()).abs().max() <= 1  # float rounding at most one level apart


def test_only_prepared_caches_of_plain_crops_are_preloaded(cache, samples):
    assert preload_blocker(cache, Augment()) is None
    assert "prepared cache" in preload_blocker(find_images(samples / "train").records, Augment())
    assert "crop-scale" in preload_blocker(cache, Augment(crop_scale=0.5))


def test_a_preloaded_run_scores_as_the_loaders(samples, tmp_path):
    """A short fp32 run from a prepared cache, preloaded and through the loader: within 0.1 dB (the
    same crops in the same order: in practice the same numbers), and the summary says which ran."""
    import csv

    from conftest import tiny_config
    from featinv.training import train

    prepare(samples / "train", tmp_path / "train", size=256, workers=0)
    prepare(samples / "val", tmp_path / "val", size=256, workers=0)
    runs = {}
    for mode in ("on", "off"):
        cfg = tiny_config(tmp_path / "train", tmp_path / "val", epochs=3)
        cfg.data.preload, cfg.train.num_save = mode, 0
        runs[mode] = train(cfg, tmp_path / mode, semantic=False)
    assert runs["on"]["preloaded"] and not runs["off"]["preloaded"]
    assert abs(runs["on"]["val"]["psnr"] - runs["off"]["val"]["psnr"]) < 0.1
    curves = [[r["val_psnr"] for r in csv.DictReader(open(tmp_path / m / "metrics.csv"))] for m in ("on", "off")]
    assert len(curves[0]) == 3 and curves[0] == curves[1]
