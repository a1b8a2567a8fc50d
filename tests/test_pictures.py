"""Training pictures: CLS attention equals the attention matrix of timm's unfused path, picture
sizes, and the callback writing images and the embedding projector to TensorBoard."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from acclimate.backbones import create_backbone
from acclimate.data.sources import open_source
from acclimate.data.transforms import EvalTransform
from acclimate.eval.pictures import PictureMonitor, cls_attention, patch_pca_rgb, picture_panels


@torch.no_grad()
def reference_cls_attention(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The softmax weights of the last block from timm's own unfused attention, CLS row."""
    attn = model.blocks[-1].attn
    fused, attn.fused_attn = attn.fused_attn, False
    captured = []
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        model.forward_features(x)
    finally:
        handle.remove()
        attn.fused_attn = fused
    return captured[-1][:, :, 0]  # (B, heads, N)


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_cls_attention_matches_unfused_attention(reg_tokens: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "test_vit", num_classes=0, reg_tokens=reg_tokens, dynamic_img_size=True
    ).eval()
    x = torch.randn(2, 3, 64, 48)  # a 4 x 3 grid of 16 px patches
    att = cls_attention(model, x)
    assert att.shape == (2, model.blocks[-1].attn.num_heads, 4, 3)
    expected = reference_cls_attention(model, x)[:, :, 1 + reg_tokens :].reshape(att.shape)
    torch.testing.assert_close(att, expected, atol=1e-6, rtol=1e-5)


def test_picture_sizes() -> None:
    torch.manual_seed(0)
    vit, cnn = create_backbone("test_vit").eval(), create_backbone("test_resnet").eval()
    x = torch.randn(3, 3, 64, 64)
    rgb = patch_pca_rgb(vit, x)
    assert rgb.shape == (3, 3, 4, 4) and rgb.min() >= 0 and rgb.max() <= 1
    assert patch_pca_rgb(cnn, x).shape == (3, 3, 2, 2)
    panels = picture_panels(vit, x, [0.5] * 3, [0.25] * 3)
    heads = vit.blocks[-1].attn.num_heads
    assert panels["overview"].shape == (3, 3 * 64, 3 * 64)  # input | attention | PCA
    assert panels["attention_heads"].shape == (3, 3 * 64, heads * 64)
    panels = picture_panels(cnn, x[:, :1].expand(-1, 3, -1, -1), [0.5] * 3, [0.25] * 3)
    assert set(panels) == {"overview"} and panels["overview"].shape == (3, 3 * 64, 2 * 64)
    with pytest.raises(ValueError, match="class token"):
        cls_attention(cnn, x)


def test_picture_monitor_logs_to_tensorboard(tmp_path, tiny_dataset) -> None:
    torch.manual_seed(0)
    vit = create_backbone("test_vit").eval()
    src = open_source(tiny_dataset, "val")
    monitor = PictureMonitor(
        src, EvalTransform(32, [0.5] * 3, [0.25] * 3), [0.5] * 3, [0.25] * 3, 2, 9
    )
    assert monitor.images.shape == (2, 3, 32, 32)
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], global_step=0)
    module = SimpleNamespace(export_backbone=lambda: vit, device=torch.device("cpu"))
    monitor._log(trainer, module)
    logger.experiment.flush()
    files = [p.name for p in (tmp_path / "tb").rglob("*")]
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert "projector_config.pbtxt" in files
    metadata = next((tmp_path / "tb").rglob("metadata.tsv")).read_text().splitlines()
    assert len(metadata) == 9 and set(metadata) == {"class_0", "class_1", "class_2"}
