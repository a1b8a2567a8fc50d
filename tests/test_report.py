"""The evaluation report: metrics against reference formulas, the probe sweep and few-shot probes
against direct computation, and ``acclimate evaluate`` writing a consistent report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import Tensor

from acclimate.cli import main
from acclimate.data.transforms import EvalTransform
from acclimate.eval.fewshot import fewshot_probe, sample_shots
from acclimate.eval.knn import knn_accuracy
from acclimate.eval.linear import train_linear_probe
from acclimate.eval.metrics import classification_metrics
from acclimate.eval.protocol import EvalSettings, labelled_splits, split_features
from acclimate.eval.report import ReportSettings, measure_features
from acclimate.eval.retrieval import retrieval_metrics
from acclimate.eval.sweep import stratified_split, sweep_linear_probe
from acclimate.export.artifact import export_backbone
from acclimate.export.load import resolve_model

# --- metrics against their textbook definitions ------------------------------------------------


def test_classification_metrics_match_definitions() -> None:
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    p = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0, 2, 1])  # class 3 never predicted right
    m = classification_metrics(y, p, 4)
    cm = [
        [sum(1 for a, b in zip(y, p, strict=True) if a == t and b == q) for q in range(4)]
        for t in range(4)
    ]
    assert m["confusion"] == cm
    f1s, recalls = [], []
    for c in range(4):
        tp = cm[c][c]
        fp = sum(cm[t][c] for t in range(4)) - tp
        fn = sum(cm[c]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn))
        recalls.append(tp / sum(cm[c]))
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 4)
    assert m["balanced_accuracy"] == pytest.approx(sum(recalls) / 4)
    assert m["top1"] == pytest.approx(sum(int(a == b) for a, b in zip(y, p, strict=True)) / 10)
    wider = classification_metrics(y, p, 6)  # classes 4, 5 never occur: left out of the means
    assert wider["macro_f1"] == pytest.approx(m["macro_f1"])
    assert wider["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    assert wider["confusion"][4] == [0] * 6
    only_predicted = classification_metrics(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), 3)
    assert only_predicted["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # true classes
    assert only_predicted["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # 2 is predicted


def brute_force_retrieval(g, gy, q, qy, k: int) -> tuple[float, float]:
    recall, ap = [], []
    for x, y in zip(q, qy, strict=True):
        sims = [float(torch.dot(x, b) / (x.norm() * b.norm())) for b in g]
        order = sorted(range(len(g)), key=lambda j: -sims[j])[:k]
        rel = [int(gy[j] == y) for j in order]
        recall.append(float(any(rel)))
        n_rel = int((gy == y).sum())
        precisions = [sum(rel[: i + 1]) / (i + 1) for i in range(k)]
        ap.append(
            sum(pr * r for pr, r in zip(precisions, rel, strict=True)) / max(min(k, n_rel), 1)
        )
    return sum(recall) / len(q), sum(ap) / len(q)


def test_retrieval_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    gallery, gy = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    queries, qy = torch.randn(15, 6, generator=g), torch.randint(0, 3, (15,), generator=g)
    m = retrieval_metrics(gallery, gy, queries, qy, ks=(1, 5, 10), chunk=4)
    for k in (1, 5, 10):
        recall, mean_ap = brute_force_retrieval(gallery, gy, queries, qy, k)
        assert m[f"recall@{k}"] == pytest.approx(recall)
        assert m[f"map@{k}"] == pytest.approx(mean_ap)


# --- probe sweep and few-shot -----------------------------------------------------------------


def _blobs(n: int, seed: int, spread: float = 3.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 4
    x = torch.cat([c + spread * torch.randn(n, 8, generator=g) for c in centres])
    return x, torch.arange(3).repeat_interleave(n)


def test_sweep_picks_best_on_validation_and_refits() -> None:
    x, y = _blobs(20, seed=0)
    fit, val = stratified_split(y, 0.25, seed=0)
    assert len(set(fit.tolist()) & set(val.tolist())) == 0 and len(fit) + len(val) == 60
    assert torch.bincount(y[val]).tolist() == [5, 5, 5]
    wds = (1e-4, 1e-2, 10.0)
    probe, info = sweep_linear_probe(x, y, 3, wds, val_fraction=0.25)
    direct = {wd: train_linear_probe(x[fit], y[fit], 3, wd).accuracy(x[val], y[val]) for wd in wds}
    assert info["val_top1"] == {f"{wd:g}": a for wd, a in direct.items()}
    best = max(direct.values())
    assert direct[info["weight_decay"]] == best
    refit = train_linear_probe(x, y, 3, info["weight_decay"])
    assert torch.equal(probe.weight, refit.weight)


def test_fewshot_matches_direct_computation() -> None:
    x, y = _blobs(12, seed=1)
    xt, yt = _blobs(5, seed=2)
    idx = sample_shots(y, 5, seed=7)
    assert torch.bincount(y[idx]).tolist() == [5, 5, 5]
    assert torch.equal(idx, sample_shots(y, 5, seed=7))
    assert len(sample_shots(y, 100, seed=0)) == 36  # capped at the class size
    out = fewshot_probe((x, y), (xt, yt), 3, shots=(1, 5), seeds=(3, 4))
    runs = [
        train_linear_probe(x[sample_shots(y, 5, s)], y[sample_shots(y, 5, s)], 3).accuracy(xt, yt)
        for s in (3, 4)
    ]
    assert out["5"]["runs"] == runs
    assert out["5"]["mean"] == pytest.approx(sum(runs) / 2)
    assert out["5"]["std"] == pytest.approx(abs(runs[0] - runs[1]) / 2)


# --- acclimate evaluate ------------------------------------------------------------------------


@pytest.fixture
def two_models(tmp_path: Path) -> tuple[str, Path]:
    """A timm weights file (the "starting backbone") and an export folder of other weights."""
    torch.manual_seed(0)
    start = timm.create_model("test_resnet", num_classes=0)
    weights = tmp_path / "start.safetensors"
    save_file(start.state_dict(), str(weights))
    torch.manual_seed(1)
    other = timm.create_model("test_resnet", num_classes=0)
    export = export_backbone(
        other, tmp_path / "export", mean=[0.5] * 3, std=[0.25] * 3, image_size=32
    )
    return str(weights), export


def test_evaluate_writes_a_consistent_report(tmp_path, tiny_dataset, two_models, capsys):
    from conftest import make_class_folders

    source = make_class_folders(tmp_path / "source", n_train=6, n_val=3, seed=5)
    weights, export = two_models
    out = tmp_path / "report"
    args = ["evaluate", "test_resnet", str(export), "--weights", weights, "--image-size", "32"]
    args += ["--data", str(tiny_dataset), "--forgetting-data", str(source), "--out", str(out)]
    args += ["--shots", "1", "5", "--seeds", "2"]
    assert main(args) == 0
    assert "report:" in capsys.readouterr().out

    for name in ("report.md", "report.html", "metrics.json", "accuracy.png", "fewshot.png"):
        assert (out / name).stat().st_size > 0, name
    for i in range(2):
        assert (out / f"confusion_{i}.png").exists() and (out / f"embedding_{i}.png").exists()
    result = json.loads((out / "metrics.json").read_text())
    assert list(result["models"]) == ["test_resnet", str(export)]

    # the same numbers computed directly from the features of the export
    m = result["models"][str(export)]
    r = resolve_model(str(export))
    protocol = EvalSettings(num_workers=0)
    sources = labelled_splits(str(tiny_dataset), 3, protocol)
    tf = EvalTransform(r.image_size, r.mean, r.std)
    (xtr, ytr), (xte, yte) = split_features(r.model, sources, tf, protocol)
    assert (m["n_train"], m["n_test"]) == (36, 18)
    for k in (10, 20):
        assert m["knn"][str(k)] == pytest.approx(knn_accuracy(xtr, ytr, xte, yte, k))
    probe = train_linear_probe(xtr, ytr, 3, m["linear"]["weight_decay"])
    pred = probe.predict(xte)
    assert m["linear_top1"] == pytest.approx(float((pred == yte).float().mean()))
    assert m["linear"]["confusion"] == classification_metrics(yte, pred, 3)["confusion"]
    assert sum(map(sum, m["linear"]["confusion"])) == 18
    assert set(m["fewshot"]) == {"1", "5"} and len(m["fewshot"]["5"]["runs"]) == 2
    assert m["retrieval"]["recall@1"] == pytest.approx(
        retrieval_metrics(xtr, ytr, xte, yte, ks=(1,))["recall@1"]
    )
    f = m["forgetting"]  # the same probe on the source-domain features
    (ftr, fytr), (fte, fyte) = split_features(
        r.model, labelled_splits(str(source), 3, protocol), tf, protocol
    )
    assert (f["n_train"], f["n_test"]) == (18, 9)
    source_probe = train_linear_probe(ftr, fytr, 3, f["linear"]["weight_decay"])
    assert f["linear_top1"] == pytest.approx(source_probe.accuracy(fte, fyte))
    assert f["knn_top1"] == pytest.approx(knn_accuracy(ftr, fytr, fte, fyte, 20))
    assert f["linear_top1"] >= 0.8  # 3 colour classes: chance is 1/3

    report = (out / "report.md").read_text()
    assert f"{m['linear_top1']:.4f}" in report and "Forgetting" in report
    assert "![accuracy](accuracy.png)" in report
    assert "<table>" in (out / "report.html").read_text()

    # the export's model card carries the headline numbers of both models
    meta = json.loads((export / "acclimate.json").read_text())
    assert set(meta["evaluation"]["models"]) == {"test_resnet", str(export)}
    card = (export / "README.md").read_text()
    assert "Evaluation report" in card and "**this export**" in card
    assert f"{m['macro_f1']:.4f}" in card
    assert "Protocol: frozen `pooled` features; weighted kNN (k=20" in card
    assert meta["evaluation"]["protocol"]["max_test_images"] == 5000  # training's protocol
    # the start (a timm name) read as the export is: its statistics, at the given size
    start = result["models"]["test_resnet"]["preprocessing"]
    assert start == {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}


def test_measure_features_without_optional_parts() -> None:
    x, y = _blobs(10, seed=3)
    xt, yt = _blobs(4, seed=4)
    s = ReportSettings(knn_k=5, knn_ks=(5,), probe_weight_decays=(1e-3,))
    m = measure_features((x, y), (xt, yt), s, ["a", "b", "c"], fewshot=False, retrieval=False)
    assert "fewshot" not in m and "retrieval" not in m
    assert m["knn_top1"] == m["knn"]["5"] and m["classes"] == ["a", "b", "c"]
