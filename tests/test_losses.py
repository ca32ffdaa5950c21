import pytest
import torch

from featinv import losses
from featinv.training import train

from conftest import tiny_config


def test_mse_loss_returns_parts_and_is_zero_for_identical_images():
    x = torch.rand(2, 3, 16, 16)
    parts = losses.ReconstructionLoss()(x, x)
    assert set(parts) == {"loss", "mse"} and float(parts["loss"]) == 0.0
    y = x.clone().requires_grad_(True)
    out = losses.ReconstructionLoss()(y * 0.5, x)
    assert float(out["loss"].detach()) > 0
    out["loss"].backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_normalized_targets_are_refused():
    x = torch.rand(2, 3, 16, 16)
    normalized = (x - 0.45) / 0.225
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        losses.ReconstructionLoss()(x, normalized)


def test_training_gives_the_loss_unnormalized_unit_range_targets(tmp_path, samples, monkeypatch):
    """The original compared a sigmoid output with ImageNet-normalized targets (PSNR ≈ 1 dB).
    Spy on every target the loss sees during a real (tiny) training run."""
    seen = []
    original = losses.ReconstructionLoss.forward

    def spy(self, pred, target, features=None):
        seen.append((float(target.min()), float(target.max()), float(target.mean())))
        return original(self, pred, target, features)

    monkeypatch.setattr(losses.ReconstructionLoss, "forward", spy)
    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images = 3
    train(cfg, tmp_path / "run")
    assert seen
    for lo, hi, mean in seen:
        assert 0.0 <= lo and hi <= 1.0
        assert 0.05 < mean < 0.95  # photos, not zero-centred normalized tensors


def _pair(seed=0, size=176):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, size, size, generator=g)
    # a smooth image-like target: SSIM terms see structure, not only noise
    target = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2)
    pred = (target + 0.1 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred, target


@pytest.mark.parametrize("term", ["mse", "l1", "ssim", "ms_ssim"])
def test_each_pixel_loss_is_zero_on_identical_positive_otherwise_and_differentiable(term):
    pred, target = _pair()
    loss = losses.ReconstructionLoss(**{"mse": 0.0, term: 1.0})
    same = loss(target, target)
    assert set(same) == {"loss", term}
    assert abs(float(same["loss"])) < 1e-5
    p = pred.clone().requires_grad_(True)
    parts = loss(p, target)
    assert float(parts["loss"].detach()) > 1e-3
    parts["loss"].backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_parts_are_weighted_into_the_total():
    pred, target = _pair(1)
    parts = losses.ReconstructionLoss(mse=2.0, l1=0.5, ssim=0.25)(pred, target)
    assert set(parts) == {"loss", "mse", "l1", "ssim"}
    expected = 2.0 * parts["mse"] + 0.5 * parts["l1"] + 0.25 * parts["ssim"]
    assert torch.allclose(parts["loss"], expected)


def test_ssim_loss_is_one_minus_the_ssim_metric():
    from featinv.metrics import ssim

    pred, target = _pair(2, size=64)
    assert torch.allclose(losses.ssim_loss(pred, target), 1 - ssim(pred, target).mean(), atol=1e-5)


def test_perceptual_loss_leaves_the_backbone_frozen():
    module = losses.PerceptualLoss("resnet18", "random", ["layer1", "layer2"])
    loss = losses.ReconstructionLoss(mse=0.0, perceptual=1.0, perceptual_module=module).train()
    assert not module.extractor.training  # .train() on the loss does not unfreeze batch norm
    pred, target = _pair(3, size=64)
    same = loss(target, target)
    assert set(same) == {"loss", "perceptual"} and abs(float(same["loss"])) < 1e-6
    before = {k: v.clone() for k, v in module.state_dict().items()}
    p = pred.clone().requires_grad_(True)
    parts = loss(p, target)
    assert float(parts["perceptual"].detach()) > 0
    parts["loss"].backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0  # gradients reach the image...
    assert all(q.grad is None and not q.requires_grad for q in module.parameters())  # ...not the backbone
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # running stats untouched


def test_loss_weights_are_checked():
    from featinv.utils import FeatinvError

    with pytest.raises(FeatinvError, match="positive weight"):
        losses.ReconstructionLoss(mse=0.0)
    with pytest.raises(FeatinvError, match=">= 0"):
        losses.ReconstructionLoss(mse=1.0, l1=-1.0)


def test_cli_loss_flag_names_terms_and_zeroes_the_rest(tmp_path, capsys):
    from featinv.cli import _set_loss_weights, main
    from featinv.config import RunConfig

    cfg = RunConfig()
    _set_loss_weights(cfg, ["l1=1", "ssim=0.25"])
    assert (cfg.loss.mse, cfg.loss.l1, cfg.loss.ssim, cfg.loss.perceptual) == (0.0, 1.0, 0.25, 0.0)
    argv = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--loss", "l1=1", "nope=2"]
    assert main(argv) == 2  # one clear line, no training
    assert "--loss takes TERM=WEIGHT" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_training_logs_each_loss_part(tmp_path, samples):
    import csv

    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images = 3
    cfg.loss.mse, cfg.loss.ssim, cfg.loss.perceptual = 1.0, 0.5, 0.1
    cfg.loss.perceptual_layers = ["layer1"]
    summary = train(cfg, tmp_path / "run")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    for part in ("mse", "ssim", "perceptual"):
        assert float(rows[0][f"train_{part}"]) > 0
    total = 1.0 * float(rows[0]["train_mse"]) + 0.5 * float(rows[0]["train_ssim"]) + 0.1 * float(rows[0]["train_perceptual"])
    assert abs(total - summary["train_loss"]) < 1e-4 * max(1.0, total)


def test_the_config_lists_every_term_the_loss_computes():
    from featinv import losses
    from featinv.config import LOSS_TERMS, LossConfig

    assert LOSS_TERMS == (*losses.PIXEL_TERMS, "perceptual", "feature")
    assert all(isinstance(getattr(LossConfig(), t), float) for t in LOSS_TERMS)  # each has its weight


def test_pixel_terms_are_float32_under_bf16_autocast():
    """The module's promise: under autocast, each pixel term is computed in float32 from a bf16
    prediction, the same value as outside autocast (bf16 convolutions in SSIM would move it by
    about 1e-3)."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 48, 48)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).to(torch.bfloat16)
    loss = losses.ReconstructionLoss(mse=1.0, l1=1.0, ssim=1.0)
    reference = loss(pred.float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = loss(pred, target)
    for k in ("mse", "l1", "ssim", "loss"):
        assert parts[k].dtype == torch.float32, k
        assert parts[k].item() == pytest.approx(reference[k].item(), rel=1e-6, abs=1e-7), k


def test_the_logged_train_loss_is_the_image_weighted_mean_of_the_epochs_steps(tmp_path, samples):
    """metrics.csv's train_loss and train_mse, against the steps' own losses averaged here: 9
    photos in batches of 4 (4, 4, 1), so an unweighted mean of batches or a count of batches
    instead of images is seen."""
    import csv

    from featinv.training import Trainer

    steps = []

    class Watching(Trainer):
        def train_step(self, x, index, step):
            parts = super().train_step(x, index, step)
            steps.append((len(x), {k: float(v.detach()) for k, v in parts.items()}))
            return parts

    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.train.batch_size, cfg.train.num_save = 4, 0
    cfg.loss.ssim = 0.5
    Watching(cfg, tmp_path / "run").fit()
    assert [n for n, _ in steps] == [4, 4, 1]
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    for k in ("loss", "mse", "ssim"):
        by_hand = sum(n * p[k] for n, p in steps) / 9
        assert float(row[f"train_{k}"]) == pytest.approx(by_hand, rel=1e-5), k


def test_feature_consistency_is_the_feature_error_and_trains_only_the_image():
    """At the run's own taps: ‖φ(x̂) − φ(x)‖² / ‖φ(x)‖² per image and tap (by hand here), zero for
    the original itself; the gradient reaches the reconstruction, never the frozen backbone."""
    from featinv.backbones import FeatureExtractor

    fe = FeatureExtractor("resnet18", "random", ["stage1", "stage3"])
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    pred = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    term = losses.FeatureConsistency(fe)
    with torch.no_grad():
        fx = fe(x)
    value = term(pred, fx)
    with torch.no_grad():
        fp = fe(pred)
        by_hand = sum(((fp[k][i] - fx[k][i]) ** 2).sum() / (fx[k][i] ** 2).sum() for k in fx for i in range(2)) / 4
    assert value.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert term(x, fx).item() == pytest.approx(0.0, abs=1e-10)
    value.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in fe.parameters())


def test_training_with_feature_consistency_logs_it_in_the_total(tmp_path, samples):
    import csv

    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images, cfg.train.num_save = 3, 0
    cfg.loss.feature = 0.5
    summary = train(cfg, tmp_path / "run")
    row = next(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert float(row["train_feature"]) > 0
    total = float(row["train_mse"]) + 0.5 * float(row["train_feature"])
    assert summary["train_loss"] == pytest.approx(total, rel=1e-4)
    with pytest.raises(featinv_error(), match="feature-consistency weight needs the run's backbone"):
        losses.ReconstructionLoss(mse=1.0, feature=1.0)


def featinv_error():
    from featinv.utils import FeatinvError

    return FeatinvError
