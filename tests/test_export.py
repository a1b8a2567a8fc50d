"""Export folders: stock timm loads them to identical features; acclimate.load preprocesses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors import safe_open
from torch import nn

import acclimate
from acclimate.backbones import create_backbone
from acclimate.data.transforms import EvalTransform
from acclimate.export import META_FILE, export_backbone
from acclimate.export.load import network_of


def _backbone(name: str, in_chans: int) -> nn.Module:
    """A tiny random backbone whose every weight and BN statistic is non-trivial."""
    torch.manual_seed(0)
    model = create_backbone(name, in_chans=in_chans)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model.eval()


CASES = [
    # name, in_chans, mean, std, image_size
    ("test_vit", 3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 32),
    ("test_resnet", 1, [0.31], [0.17], 48),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def exported(request, tmp_path_factory) -> tuple[nn.Module, Path, list, list, int]:
    name, in_chans, mean, std, size = request.param
    model = _backbone(name, in_chans)
    before = copy.deepcopy(model.state_dict())
    out = tmp_path_factory.mktemp(name) / "export"
    recipe = {"backbone": {"name": name, "weights": None}, "method": {"name": "dino"}}
    assert export_backbone(model, out, mean=mean, std=std, image_size=size, recipe=recipe) == out
    for k, v in model.state_dict().items():  # exporting leaves the live model alone
        assert torch.equal(v, before[k]), k
    return model, out, mean, std, size


def test_stock_timm_gives_identical_features(exported) -> None:
    model, out, mean, _, size = exported
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    x = torch.randn(3, len(mean), size, size)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert timm.data.resolve_data_config({}, model=loaded)["input_size"] == (len(mean), size, size)


def test_acclimate_load_preprocesses(exported) -> None:
    model, out, mean, std, size = exported
    extractor = acclimate.load(out)
    assert (extractor.mean, extractor.std, extractor.image_size) == (mean, std, size)
    images = torch.randint(0, 256, (4, len(mean), size + 9, size + 20), dtype=torch.uint8)
    transform = EvalTransform(size, mean, std)
    with torch.no_grad():
        expected = model(torch.stack([transform(im) for im in images]))
    assert torch.equal(extractor.features(images), expected)
    with torch.no_grad():  # a single (C, H, W) image (batch size changes float rounding)
        single = model(transform(images[0]).unsqueeze(0))
    assert torch.equal(extractor.features(images[0]), single)


def test_config_json_holds_preprocessing(exported) -> None:
    _, out, mean, std, size = exported
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert cfg["mean"] == mean and cfg["std"] == std
    assert cfg["input_size"] == [len(mean), size, size]
    meta = json.loads((out / META_FILE).read_text())
    assert (meta["mean"], meta["std"], meta["image_size"]) == (mean, std, size)
    assert meta["channels"] == len(mean)


def test_no_lora_tensors_and_a_model_card(exported) -> None:
    _, out, *_ = exported
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k.lower() for k in keys)
    card = (out / "README.md").read_text()
    assert f'timm.create_model("local-dir:{out.name}"' in card
    assert "acclimate.load" in card
    assert (out / "recipe.yaml").is_file()


def test_export_refuses_unmerged_lora(tmp_path: Path) -> None:
    model = _backbone("test_resnet", 3)
    model.lora_A = nn.Linear(2, 2)  # a leftover adapter tensor
    with pytest.raises(ValueError, match="LoRA"):
        export_backbone(model, tmp_path / "out", mean=[0.5] * 3, std=[0.2] * 3, image_size=32)


def test_load_refuses_a_non_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not an acclimate export"):
        acclimate.load(tmp_path)


def test_network_of_names_what_the_checkpoint_holds() -> None:
    ema = {"backbone.w": torch.zeros(1), "teacher_backbone.w": torch.zeros(1)}
    plain = {"backbone.w": torch.zeros(1), "projection.w": torch.zeros(1)}  # distill, SimCLR, MAE
    assert network_of(ema, "teacher") == "EMA teacher"
    assert network_of(ema, "student") == "student"
    assert network_of(plain, "teacher") == "student"  # no EMA teacher: the trained backbone ships
