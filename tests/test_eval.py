"""Frozen-feature evaluation: weighted kNN against brute force, the linear probe, features."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import timm
import torch
from torch import Tensor

from acclimate.backbones import create_backbone
from acclimate.eval.features import extract_features, features_of
from acclimate.eval.knn import knn_accuracy, knn_predict
from acclimate.eval.linear import LinearProbe, train_linear_probe
from acclimate.eval.protocol import EvalSettings, Protocol, protocol_knn, score_features

# --- weighted kNN ------------------------------------------------------------------------------


def brute_force_knn(
    bank: Tensor, labels: Tensor, queries: Tensor, n_classes: int, k: int, temperature: float
) -> Tensor:
    """Weighted kNN of DINO's eval_knn.py, one query at a time: cosine similarity to every bank
    feature, the k most similar vote for their class with weight exp(sim / T)."""
    scores = torch.zeros(len(queries), n_classes, dtype=torch.float64)
    for i, q in enumerate(queries.double()):
        sims = [float(torch.dot(q, b) / (q.norm() * b.norm())) for b in bank.double()]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        for j in order:
            scores[i, int(labels[j])] += torch.exp(torch.tensor(sims[j] / temperature))
    return scores


@pytest.fixture
def random_features() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(60, 8, generator=g) * torch.rand(60, 1, generator=g) * 5  # mixed norms
    labels = torch.randint(0, 4, (60,), generator=g)
    queries = torch.randn(25, 8, generator=g)
    query_labels = torch.randint(0, 4, (25,), generator=g)
    return bank, labels, queries, query_labels


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (5, 0.07), (20, 0.5)])
def test_knn_equals_brute_force(random_features, k: int, temperature: float) -> None:
    bank, labels, queries, query_labels = random_features
    scores = knn_predict(bank, labels, queries, 4, k=k, temperature=temperature, chunk=7)
    expected = brute_force_knn(bank, labels, queries, 4, k, temperature)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)
    predicted = expected.argmax(1)
    accuracy = knn_accuracy(bank, labels, queries, query_labels, k=k, temperature=temperature)
    assert accuracy == pytest.approx((predicted == query_labels).double().mean().item())


def test_knn_k_larger_than_bank(random_features) -> None:
    bank, labels, queries, query_labels = random_features
    bank, labels = bank[:6], labels[:6]
    scores = knn_predict(bank, labels, queries, 4, k=50)
    expected = brute_force_knn(bank, labels, queries, 4, 6, 0.07)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)
    accuracy = (expected.argmax(1) == query_labels).double().mean().item()
    assert knn_accuracy(bank, labels, queries, query_labels, k=50) == pytest.approx(accuracy)


def test_knn_finds_itself() -> None:
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(30, 16, generator=g)
    labels = torch.arange(30) % 3
    assert knn_accuracy(bank, labels, bank * 2.0, labels, k=1) == 1.0  # scale-invariant
    with pytest.raises(ValueError):
        knn_predict(bank, labels, bank, 3, k=0)


# --- linear probe ------------------------------------------------------------------------------


def _blobs(n_per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """Three well-separated Gaussian blobs in 6 dimensions, with an offset and a large scale."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[8.0, 0, 0, 0, 0, 0], [0, 8.0, 0, 0, 0, 0], [0, 0, 8.0, 0, 0, 0]])
    x = torch.cat([c + torch.randn(n_per_class, 6, generator=g) for c in centres])
    y = torch.arange(3).repeat_interleave(n_per_class)
    return x * 30 + 100, y


def test_linear_probe_separates_blobs(tmp_path: Path) -> None:
    x, y = _blobs(40, seed=0)
    x_test, y_test = _blobs(20, seed=1)
    probe = train_linear_probe(x, y, n_classes=3, classes=["a", "b", "c"])
    assert probe.weight.shape == (3, 6) and probe.bias.shape == (3,)
    assert probe.accuracy(x, y) == 1.0
    assert probe.accuracy(x_test, y_test) == 1.0

    path = tmp_path / "probe.safetensors"
    probe.save(path)
    loaded = LinearProbe.load(path, classes=probe.classes)
    assert loaded.classes == ["a", "b", "c"]
    assert torch.equal(loaded.logits(x_test), probe.logits(x_test))


def test_linear_probe_is_deterministic() -> None:
    x, y = _blobs(10, seed=2)
    a, b = train_linear_probe(x, y, 3), train_linear_probe(x, y, 3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)


# --- features ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("test_vit").eval()


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("test_resnet").eval()


@torch.no_grad()
def test_vit_feature_shapes(vit) -> None:
    x = torch.randn(2, 3, 64, 64)  # patch 16: a 4 x 4 grid, plus one CLS token
    pooled = features_of(vit, x, "pooled")
    assert pooled.shape == (2, 64)
    torch.testing.assert_close(pooled, vit(x))
    cls = features_of(vit, x, "cls")
    assert cls.shape == (2, 64)
    assert features_of(vit, x, "patch").shape == (2, 16, 64)
    tokens = vit.forward_features(x)
    assert torch.equal(cls, tokens[:, 0])


@torch.no_grad()
def test_cnn_feature_shapes(resnet) -> None:
    x = torch.randn(2, 3, 64, 64)  # test_resnet downsamples 32x: a 2 x 2 feature map
    pooled = features_of(resnet, x, "pooled")
    assert pooled.shape == (2, 96)
    torch.testing.assert_close(pooled, resnet(x))
    patch = features_of(resnet, x, "patch")
    assert patch.shape == (2, 4, 96)
    torch.testing.assert_close(patch.mean(1), pooled)  # average pooling of the same map
    with pytest.raises(ValueError, match="cls"):
        features_of(resnet, x, "cls")


@torch.no_grad()
def test_cls_needs_a_cls_token() -> None:
    model = timm.create_model("test_vit", num_classes=0, class_token=False, global_pool="avg")
    x = torch.randn(1, 3, 160, 160)
    assert features_of(model, x, "patch").shape == (1, 100, 64)
    with pytest.raises(ValueError, match="CLS"):
        features_of(model, x, "cls")


def test_extract_features_restores_mode(resnet) -> None:
    g = torch.Generator().manual_seed(0)
    loader = [(torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 1, 2])) for _ in range(2)]
    resnet.train()
    try:
        feats, labels = extract_features(resnet, loader, kind="pooled")
        assert resnet.training
    finally:
        resnet.eval()
    assert feats.shape == (6, 96) and feats.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        torch.testing.assert_close(feats[:3], resnet(loader[0][0]))  # computed in eval mode
    patch, _ = extract_features(resnet, loader, kind="patch")
    assert patch.shape == (6, 1, 96)
    with pytest.raises(ValueError):
        extract_features(resnet, [])


def test_score_features_keys() -> None:
    x, y = _blobs(15, seed=3)
    x_test, y_test = _blobs(5, seed=4)
    metrics, probe = score_features(
        (x, y), (x_test, y_test), EvalSettings(knn_k=5), ["a", "b", "c"]
    )
    assert set(metrics) == {"knn_top1", "linear_top1", "probe_weight_decay", "n_train", "n_test"}
    assert (metrics["n_train"], metrics["n_test"]) == (45, 15)
    assert metrics["knn_top1"] == 1.0 and metrics["linear_top1"] == 1.0
    assert isinstance(probe, LinearProbe) and probe.classes == ["a", "b", "c"]


def test_training_probe_and_evaluate_report_one_linear_figure() -> None:
    """Training's before/after, the monitor and `acclimate probe` (score_features) and `acclimate
    evaluate` (measure_features) give the same linear top-1 and kNN for the same features."""
    from acclimate.eval.report import ReportSettings, measure_features

    g = torch.Generator().manual_seed(0)
    centres = 1.5 * torch.randn(4, 16, generator=g)
    y = torch.arange(4).repeat_interleave(40)
    x = centres[y] + torch.randn(160, 16, generator=g)
    y_test = torch.arange(4).repeat_interleave(20)
    x_test = centres[y_test] + torch.randn(80, 16, generator=g)
    ours, _ = score_features((x, y), (x_test, y_test), EvalSettings())
    report = measure_features((x, y), (x_test, y_test), ReportSettings(), fewshot=False)
    assert 0.5 < ours["linear_top1"] < 1.0  # not a trivial task: the figures could differ
    assert ours["linear_top1"] == pytest.approx(report["linear_top1"], abs=1e-6)
    assert ours["probe_weight_decay"] == report["linear"]["weight_decay"]
    assert ours["knn_top1"] == report["knn_top1"]
    assert protocol_knn((x, y), (x_test, y_test), EvalSettings()) == ours["knn_top1"]  # monitor


def test_one_protocol_class_behind_the_recipe_and_the_report() -> None:
    """The recipe's eval: keys stay what they were; the protocol's fields live once (Protocol),
    and the recipe, the report and the card's record all carry the same ones."""
    from acclimate.config import signature_params
    from acclimate.eval.report import ReportSettings

    recipe_keys = {
        "data", "train_split", "test_split", "every_n_epochs", "knn_k", "knn_temperature",
        "probe_weight_decays", "probe_val_fraction", "probe_weight_decay", "max_train_images",
        "max_test_images", "before_after", "batch_size", "num_workers", "pictures", "n_pictures",
        "projector_images", "reference_size", "features",
    }  # fmt: skip
    assert set(signature_params(EvalSettings)) == recipe_keys
    protocol = {f.name for f in fields(Protocol)}
    assert protocol <= recipe_keys and protocol <= set(signature_params(ReportSettings))
    record = EvalSettings(knn_k=7, features="last2", pictures=False).as_record()
    assert set(record) == protocol and Protocol.from_record(record) == Protocol(
        knn_k=7, features="last2"
    )
    assert "kNN (k=7" in Protocol.from_record(record).describe()
    with pytest.raises(ValueError, match="probe_val_fraction"):
        Protocol(probe_val_fraction=1.0)
