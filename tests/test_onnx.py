"""ONNX export: onnxruntime gives PyTorch's pooled features (max abs diff <= 1e-4) for any batch
size, from an export folder and through ``acclimate export --onnx``."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch

import acclimate
from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.export.load import ResolvedModel

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from acclimate.export.onnx import export_onnx, onnx_features  # noqa: E402


def test_vit_onnx_equals_pytorch_for_any_batch(tmp_path):
    torch.manual_seed(0)
    vit = create_backbone("test_vit").eval()  # dynamic image size: resampled once for export
    info = export_onnx(vit, tmp_path / "vit.onnx", channels=3, image_size=32)
    assert info["input_shape"] == ["batch", 3, 32, 32] and info["output_shape"] == ["batch", 64]
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = vit(x)
        got = onnx_features(tmp_path / "vit.onnx", x)
        assert got.shape == (batch, 64)
        assert (got - expected).abs().max() <= 1e-4


def test_cli_export_onnx(tmp_path, tiny_dataset, monkeypatch, capsys):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0, in_chans=1).eval()  # grayscale
    resolved = ResolvedModel(model, [0.4], [0.2], 32, "a test run")
    # a stand-in for a run folder: the export and ONNX steps are what is tested here
    load_module = sys.modules["acclimate.export.load"]  # `acclimate.export.load` is a function
    monkeypatch.setattr(load_module, "resolve_model", lambda *a, **k: resolved)
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--onnx"]) == 0
    assert "ONNX:" in capsys.readouterr().out
    meta = json.loads((out / "acclimate.json").read_text())
    assert meta["onnx"]["file"] == "model.onnx" and meta["onnx"]["max_abs_diff"] <= 1e-4
    assert meta["onnx"]["mean"] == [0.4] and meta["onnx"]["input_shape"] == ["batch", 1, 32, 32]
    assert "## ONNX" in (out / "README.md").read_text()

    # real images, preprocessed as documented, give the extractor's features
    ex = acclimate.load(out)
    images = sorted((tiny_dataset / "val" / "class_1").glob("*.png"))[:3]
    got = onnx_features(out / "model.onnx", ex.preprocess(images))
    assert (got - ex.features(images)).abs().max() <= 1e-4


@pytest.mark.parametrize("diff", [float("nan"), 0.5])
def test_cli_export_onnx_that_disagrees_fails_and_removes_it(tmp_path, monkeypatch, capsys, diff):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=0).eval()
    resolved = ResolvedModel(model, [0.5] * 3, [0.25] * 3, 32, "a test run")
    load_module = sys.modules["acclimate.export.load"]
    monkeypatch.setattr(load_module, "resolve_model", lambda *a, **k: resolved)
    # onnxruntime's output off by `diff` (NaN: `nan > tolerance` is False, so it must be tested)
    onnx_module = sys.modules["acclimate.export.onnx"]
    monkeypatch.setattr(onnx_module, "onnx_max_abs_diff", lambda *a, **k: diff)
    run, out = tmp_path / "run", tmp_path / "export"
    run.mkdir()
    assert main(["export", str(run), "--out", str(out), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "model.onnx: onnxruntime's features differ from PyTorch's" in err
    assert not (out / "model.onnx").exists()
    assert "onnx" not in json.loads((out / "acclimate.json").read_text())
