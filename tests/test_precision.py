"""bf16 autocast and channels_last give the same reconstructions as fp32, within tolerance."""

import pytest
import torch

from featinv import metrics as M
from featinv.backbones import FeatureExtractor
from featinv.decoders import build_decoder
from featinv.evaluate import reconstruct
from featinv.training import Trainer
from featinv.utils import FeatinvError, cpu_has_native_bf16, resolve_precision

from conftest import tiny_config


@pytest.fixture(scope="module")
def models():
    fe = FeatureExtractor("resnet50", weights="random", layers=["layer1", "layer3"])
    torch.manual_seed(0)
    dec = build_decoder("pyramid", fe.feature_shapes(224), 224, width=32).eval()
    return fe, dec


def test_channels_last_matches_contiguous(models):
    fe, dec = models
    x = torch.rand(2, 3, 224, 224)
    ref = reconstruct(fe, dec, x)
    fe_cl, dec_cl = fe.to(memory_format=torch.channels_last), dec.to(memory_format=torch.channels_last)
    out = reconstruct(fe_cl, dec_cl, x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-4)


def test_bf16_autocast_is_close_to_fp32(models):
    fe, dec = models
    x = torch.rand(2, 3, 224, 224)
    ref = reconstruct(fe, dec, x, "fp32")
    out = reconstruct(fe, dec, x, "bf16")
    assert out.dtype == torch.float32
    assert float((out - ref).abs().max()) < 0.05
    assert float(M.psnr(out, ref).min()) > 35.0
    assert not torch.equal(out, ref)  # bf16 really ran


def test_precision_choices():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(FeatinvError, match="needs a GPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(FeatinvError, match="--precision"):
        resolve_precision("fp8", cpu)


class DtypeSpy(Trainer):
    """Records the dtype a convolution of the decoder computes in, inside each training step."""

    def train_step(self, x, index, step):
        conv = next(m for m in self.state.decoder.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda m, i, o: self.dtypes.append(o.dtype))
        try:
            return super().train_step(x, index, step)
        finally:
            hook.remove()


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_steps_run_in_the_chosen_precision(samples, tmp_path, precision, dtype):
    cfg = tiny_config(samples / "train", samples / "val", epochs=1)
    cfg.data.max_images = 3
    cfg.data.image_size = 64  # bf16 is emulated, and slow, on a CPU without native bf16
    cfg.train.precision = precision
    trainer = DtypeSpy(cfg, tmp_path / "run")
    trainer.dtypes = []
    summary = trainer.fit()
    assert trainer.dtypes and set(trainer.dtypes) == {dtype}  # autocast really ran (or really did not)
    assert summary["precision"] == precision and summary["channels_last"] is True
    assert summary["val"]["psnr"] > 5
