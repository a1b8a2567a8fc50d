"""MAE: the loss against the paper's code, patchify for any channel count, random masking, the
decoder, and training through the real CLI from a pretrained encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import Tensor

from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.ssl import MAE
from acclimate.ssl.losses import MAELoss
from acclimate.ssl.mae_decoder import sincos_2d
from acclimate.ssl.masking import random_masking
from acclimate.ssl.tokens import embed_tokens, encode_tokens, patchify, unpatchify

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


def reference_patchify(imgs: Tensor, p: int) -> Tensor:
    """``MaskedAutoencoderViT.patchify`` of facebookresearch/mae (3 channels, square images)."""
    h = w = imgs.shape[2] // p
    x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p**2 * 3)


def reference_mae_loss(imgs: Tensor, pred: Tensor, mask: Tensor, p: int, norm_pix: bool) -> Tensor:
    """``MaskedAutoencoderViT.forward_loss`` of facebookresearch/mae."""
    target = reference_patchify(imgs, p)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_equals_reference(norm_pix: bool) -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64)
    pred = torch.randn(3, 16, 8 * 8 * 3, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 16, generator=g) < 0.75).double()
    loss = MAELoss(norm_pix=norm_pix)(pred, patchify(imgs, 8), mask)
    expected = reference_mae_loss(imgs, pred, mask, 8, norm_pix)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_mae_loss_counts_masked_patches_only() -> None:
    target = torch.randn(2, 4, 12)
    pred = target.clone()
    mask = torch.tensor([[1, 0, 0, 1], [0, 0, 1, 0]], dtype=torch.bool)
    pred[~mask] += 100.0  # errors on visible patches do not count
    assert MAELoss(norm_pix=False)(pred, target, mask) == 0


@pytest.mark.parametrize("channels", [1, 3, 13])
def test_patchify_round_trip_any_channels(channels: int) -> None:
    x = torch.randn(2, channels, 24, 40)
    patches = patchify(x, 8)
    assert patches.shape == (2, 3 * 5, 8 * 8 * channels)
    assert torch.equal(unpatchify(patches, 8, (3, 5)), x)
    # patch (row 1, col 2) holds that 8x8 window, flattened as (p, p, C)
    window = x[:, :, 8:16, 16:24].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(patches[:, 1 * 5 + 2], window)
    if channels == 3:
        square = torch.randn(2, 3, 32, 32)
        assert torch.equal(patchify(square, 8), reference_patchify(square, 8))
    with pytest.raises(ValueError):
        patchify(torch.randn(1, channels, 20, 24), 8)


def test_random_masking() -> None:
    torch.manual_seed(0)
    keep, mask = random_masking(5, 16, 0.75)
    assert keep.shape == (5, 4) and mask.shape == (5, 16)
    assert (mask.sum(1) == 12).all()
    assert not mask.gather(1, keep).any()  # kept patches are exactly the unmasked ones
    assert not torch.equal(mask[0], mask[1])  # per-image masks
    with pytest.raises(ValueError):
        random_masking(1, 4, 1.0)


def test_sincos_positions_are_distinct() -> None:
    pos = sincos_2d((3, 5), 16)
    assert pos.shape == (15, 16)
    assert torch.cdist(pos, pos).add(torch.eye(15)).min() > 0.1


@pytest.mark.parametrize("channels", [1, 13])
def test_mae_encoder_sees_visible_patches_only(channels: int) -> None:
    torch.manual_seed(0)
    vit = create_backbone("test_vit", in_chans=channels)
    module = MAE(
        vit, batch_size=2, mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=4
    )
    x = torch.randn(2, channels, 64, 64)
    loss, pred, mask = module.forward_loss(x)
    assert pred.shape == (2, 16, 16 * 16 * channels) and int(mask.sum()) == 24
    loss.backward()
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert module.decoder.mask_token.grad.abs().sum() > 0
    # the prediction depends on the visible pixels only: re-draw the masked ones, same mask
    torch.manual_seed(1)
    _, pred_x, m = module.forward_loss(x)
    hidden = unpatchify(m[..., None].expand(-1, -1, 16 * 16 * channels).float(), 16, (4, 4))
    y = torch.where(hidden.bool(), torch.randn_like(x), x)
    torch.manual_seed(1)
    _, pred_y, _ = module.forward_loss(y)
    assert not torch.equal(x, y)
    torch.testing.assert_close(pred_x, pred_y)


def test_token_helpers_encode_like_timm() -> None:
    vit = create_backbone("test_vit").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = encode_tokens(vit, embed_tokens(vit, x))
        assert torch.allclose(tokens, vit.forward_features(x))


RECIPE = """
name: tiny-mae
backbone:
  name: test_vit
  weights: {weights}
data:
  train: {data}
  channels: {channels}
  image_size: 64
  batch_size: 6
  num_workers: 0
augment:
  n_local: 0
  global_scale: [0.5, 1.0]
  color_strength: 0.0
  blur_p: 0.0
  solarize_p: 0.0
method:
  name: mae
  mask_ratio: 0.75
  decoder_dim: 32
  decoder_depth: 1
  decoder_heads: 4
optim:
  freeze_backbone_epochs: 0
  warmup_epochs: 0
  layer_decay: 0.75
eval:
  every_n_epochs: 0
  pictures: false
  batch_size: 16
  num_workers: 0
trainer:
  max_epochs: 1
  max_steps: 3
  progress_bar: false
  log_every_n_steps: 1
"""


@pytest.mark.parametrize("channels", [3, 1])
def test_mae_trains_through_cli_and_exports(tmp_path: Path, channels: int) -> None:
    from conftest import make_class_folders

    data = make_class_folders(tmp_path / "images", n_train=6, n_val=3, channels=channels)
    torch.manual_seed(0)
    start = timm.create_model("test_vit", num_classes=0, in_chans=channels)
    weights = tmp_path / "encoder.safetensors"
    save_file(start.state_dict(), str(weights))
    recipe = tmp_path / "mae.yaml"
    recipe.write_text(RECIPE.format(weights=weights, data=data, channels=channels))
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}"]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert any(k.startswith("decoder.") for k in ckpt["state_dict"])

    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    stock = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    encoder = {
        k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")
    }
    assert stock.state_dict().keys() == start.state_dict().keys()
    for k, v in stock.state_dict().items():
        assert torch.equal(v, encoder[k]), k
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, encoder[k])]
    assert "blocks.0.attn.qkv.weight" in changed and "pos_embed" in changed
    with torch.no_grad():
        out = stock(torch.randn(1, channels, 64, 64))
    assert out.shape == (1, 64) and torch.isfinite(out).all()
