"""What the network sees: the judge, its agreement and the Fréchet distance in its features."""

import json

import numpy as np
import pytest
import torch

from featinv.cli import main
from featinv.semantics import FD_MIN_IMAGES, Judge, SemanticScorer, frechet_distance, resolve_judge


@pytest.fixture(scope="module")
def judge():
    return Judge("efficientnet_lite2")


def test_a_judge_equal_to_the_backbone_is_refused_in_one_sentence(samples, tmp_path, capsys):
    argv = ["-q", "train", "--data", str(samples / "train"), "--out", str(tmp_path / "run"), "--weights", "random",
            "--backbone", "efficientnet_lite2", "--judge", "efficientnet_lite2", "--epochs", "1", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--judge must be another network than the backbone efficientnet_lite2" in err[0]
    assert not (tmp_path / "run").exists()
    assert resolve_judge("auto", "efficientnet_lite0") == "efficientnet_lite2"
    assert resolve_judge("auto", "efficientnet_lite2") == "efficientnet_lite1"  # never the backbone itself
    assert resolve_judge("none", "efficientnet_lite0") is None


def test_the_frechet_distance_equals_a_direct_computation():
    """Against scipy's matrix square root of Σa·Σb on fixed features (the formula of FID)."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(80, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(0.5, 2.0, size=(90, 6))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    mu = a.mean(0) - b.mean(0)
    direct = mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(direct, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, a + 3.0) == pytest.approx(6 * 9.0, rel=1e-9)  # a shift of 3 in 6 dimensions


def test_the_judge_returns_its_logits_and_the_input_of_its_last_linear_layer(judge):
    x = torch.rand(2, 3, 64, 64)
    out = judge(x)
    assert out["pooled"].shape == (2, 1280) and out["logits"].shape == (2, 1000)
    with torch.no_grad():
        assert torch.allclose(judge.head(out["pooled"]), out["logits"], atol=1e-5)
    assert not judge.head._forward_pre_hooks  # the hook is gone after the call


def test_perfect_reconstructions_agree_fully_and_fd_needs_fifty_images(judge):
    torch.manual_seed(0)
    x = torch.rand(FD_MIN_IMAGES, 3, 64, 64)
    few = SemanticScorer(None, judge, stride=None)
    few.add(x[:-1], x[:-1])
    assert few.result()["fd_judge"] is None and few.result()["judge_top1_agreement"] == 1.0
    full = SemanticScorer(None, judge, stride=8)
    for s in range(0, FD_MIN_IMAGES, 10):
        full.add(x[s:s + 10], x[s:s + 10])
    r = full.result()
    assert r["judge"] == "efficientnet_lite2" and r["n_images"] == FD_MIN_IMAGES
    assert r["judge_top1_agreement"] == 1.0 and r["judge_top5_agreement"] == 1.0
    assert r["fd_judge"] == pytest.approx(0.0, abs=1e-3)
    assert r["top1_agreement"] is None  # no backbone classifier given
    assert r["reference"]["bicubic_x8"]["fd_judge"] > 0 and r["reference"]["mean_image"]["fd_judge"] > 0


def test_evaluate_writes_the_semantic_keys_computed_by_hand(samples, tmp_path, judge, capsys):
    """The shipped stage-1 decoder on the three bundled val photos: Lite2's agreement computed
    here from its own predictions, and the backbone's labelled as the backbone's."""
    from featinv.data import ImageDataset, find_images
    from featinv.evaluate import load_run
    from featinv.pretrained import shipped_decoders

    assert main(["-q", "evaluate", "stage1", "--data", str(samples / "val"), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    assert "efficientnet_lite2 (judge)" in printed and "efficientnet_lite0 (the backbone itself)" in printed
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert {"feature_cosine", "top1_agreement", "top5_agreement", "judge", "judge_top1_agreement",
            "judge_top5_agreement", "fd_judge"} <= set(m)
    assert m["judge"] == "efficientnet_lite2" and m["fd_judge"] is None  # 3 images
    run = load_run(shipped_decoders()["stage1"], device="cpu")
    records = find_images(samples / "val").records
    x = torch.stack([ImageDataset(records, train=False)[(i, 0)]["image"] for i in range(len(records))]).float() / 255
    with torch.no_grad():
        original, recon = judge(x)["logits"].argmax(1), judge(run.reconstruct(x).float())["logits"]
    assert m["judge_top1_agreement"] == pytest.approx((recon.argmax(1) == original).float().mean().item())
    top5 = sum(int(o) in r.topk(5).indices.tolist() for o, r in zip(original, recon)) / len(records)
    assert m["judge_top5_agreement"] == pytest.approx(top5)
    assert set(m["semantic_reference"]) == {"bicubic_x4", "mean_image"}


def test_feature_cosine_of_reconstructions_and_the_mean_image_line_by_hand():
    """The scorer's cosines, accumulated over two batches, against cos(φ(x̂), φ(x)) and
    cos(φ(mean), φ(x)) computed on the whole set at once."""
    from featinv.backbones import FeatureExtractor

    fe = FeatureExtractor("resnet18", "random", ["stage1", "stage3"])
    torch.manual_seed(0)
    x = torch.rand(6, 3, 64, 64)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    scorer = SemanticScorer(None, None, None, extractor=fe)
    scorer.add(x[:3], y[:3])
    scorer.add(x[3:], y[3:])
    r = scorer.result()

    def cos(a, b):  # per image, per tap, then the mean over taps and images
        fa, fb = fe(a), fe(b)
        return sum(torch.nn.functional.cosine_similarity(fa[k].flatten(1), fb[k].flatten(1)) for k in fa).mean() / 2

    with torch.no_grad():
        assert r["feature_cosine"] == pytest.approx(cos(y, x).item(), rel=1e-5)
        mean = x.mean(0, keepdim=True).expand_as(x)
        assert r["reference"]["mean_image"]["feature_cosine"] == pytest.approx(cos(mean, x).item(), rel=1e-5)
