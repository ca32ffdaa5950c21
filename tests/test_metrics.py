import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from featinv import metrics as M
from featinv.data import load_image, preprocess


def _photo(path) -> np.ndarray:
    return preprocess(load_image(path)).permute(1, 2, 0).numpy().astype(np.float64) / 255.0


def _t(arrays) -> torch.Tensor:
    return torch.tensor(np.stack(arrays)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def pairs(samples):
    """Real photos against noisy and blurred versions of themselves."""
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for i, path in enumerate(sorted(samples.glob("val/*.jpg"))):
        x = _photo(path)
        noisy = np.clip(x + rng.normal(0, 0.05 * (i + 1), x.shape), 0, 1)
        blurred = np.asarray(Image.fromarray((x * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1 + i))) / 255.0
        preds += [noisy, blurred]
        targets += [x, x]
    return _t(preds), _t(targets)


def test_ssim_matches_scikit_image(pairs):
    pred, target = pairs
    ours = M.ssim(pred, target)
    for i in range(len(pred)):
        ref = structural_similarity(
            pred[i].permute(1, 2, 0).numpy(), target[i].permute(1, 2, 0).numpy(),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1, data_range=1,
        )
        assert abs(float(ours[i]) - ref) < 1e-4


def test_psnr_and_mse_match_scikit_image(pairs):
    pred, target = pairs
    p, m = M.psnr(pred, target), M.mse(pred, target)
    for i in range(len(pred)):
        a, b = pred[i].numpy(), target[i].numpy()
        assert abs(float(p[i]) - peak_signal_noise_ratio(b, a, data_range=1)) < 1e-4
        assert abs(float(m[i]) - np.mean((a - b) ** 2)) < 1e-9


def test_values_are_per_image_not_pooled(pairs):
    pred, target = pairs
    p = M.psnr(pred, target)
    assert p.shape == (len(pred),)
    # The mean of per-image PSNRs differs from the PSNR of the pooled MSE when errors differ.
    pooled = -10 * torch.log10(((pred - target) ** 2).mean())
    assert abs(float(p.mean()) - float(pooled)) > 0.1
    # Each image's value does not depend on its batch-mates.
    assert torch.allclose(M.ssim(pred[:1], target[:1]), M.ssim(pred, target)[:1], atol=1e-6)


def test_identical_images_score_perfectly(pairs):
    _, target = pairs
    s = M.score(target, target)
    assert torch.all(s["mse"] == 0)
    assert torch.allclose(s["ssim"], torch.ones_like(s["ssim"]), atol=1e-6)
    assert torch.all(s["psnr"] >= 99.9) and torch.all(torch.isfinite(s["psnr"]))


@pytest.mark.parametrize("fn", [M.mse, M.psnr, M.ssim])
def test_out_of_range_inputs_raise(fn):
    x = torch.rand(2, 3, 32, 32)
    normalized = (x - 0.45) / 0.225  # ImageNet-normalized: values below 0 and above 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(normalized, x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn(x, x * 2)


def test_bicubic_reference_gets_worse_with_stride(pairs):
    _, target = pairs
    p4 = M.psnr(M.bicubic_thumbnail(target, 4), target).mean()
    p32 = M.psnr(M.bicubic_thumbnail(target, 32), target).mean()
    assert p4 > p32 + 3


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_the_thumbnail_line_is_an_antialiased_bicubic_at_its_stride(samples, stride):
    """The reference line against an independent one, PIL's bicubic down to h // stride (PIL
    filters over the whole footprint when it reduces) and back up: they agree to > 40 dB on the
    bundled photos (measured 45-46); sampled without antialiasing the line drops to 21-30 dB, at
    stride / 2 or 2 × stride it sits elsewhere too."""
    for path in sorted((samples / "val").glob("*.jpg")):
        x = torch.from_numpy(_photo(path)).permute(2, 0, 1)[None].float()
        h = x.shape[-1]
        pil = Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        ref = pil.resize((h // stride, h // stride), Image.BICUBIC).resize((h, h), Image.BICUBIC)
        ref = torch.from_numpy(np.array(ref)).permute(2, 0, 1)[None].float() / 255
        assert M.psnr(M.bicubic_thumbnail(x, stride), ref).item() > 40


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_stripes_at_the_stride_come_out_flat_grey_and_four_times_wider_survive(stride):
    """A map at stride s holds no detail of period s: stripes of that period become their mean,
    0.5, everywhere (unfiltered sampling keeps one phase: flat 0 or 1; a finer thumbnail keeps
    stripes), while stripes of period 4s (4 samples per period) keep most of their contrast."""

    def stripes(period: int) -> torch.Tensor:
        return ((torch.arange(224) % period) < period // 2).float().expand(1, 3, 224, 224).contiguous()

    inner = (..., slice(2 * stride, -2 * stride), slice(2 * stride, -2 * stride))  # away from the borders
    flat = M.bicubic_thumbnail(stripes(stride), stride)[inner]
    assert flat.std() < 0.03 and abs(flat.mean() - 0.5) < 0.03
    assert M.bicubic_thumbnail(stripes(4 * stride), stride)[inner].std() > 0.3
