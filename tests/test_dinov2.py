"""DINOv2: iBOT and KoLeo against the papers' formulas, block masks, Sinkhorn-Knopp, the masked
ViT forward (with registers), layer-wise LR decay, and training through the real CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from acclimate.backbones import create_backbone
from acclimate.backbones.formats import PRETRAINED_MASK_TOKEN
from acclimate.cli import main
from acclimate.config import construct, load_recipe
from acclimate.ssl import DINOv2, OptimSettings
from acclimate.ssl.losses import IBOTLoss, KoLeoLoss
from acclimate.ssl.masking import block_mask, block_masks
from acclimate.ssl.optim import param_groups
from acclimate.ssl.sinkhorn import sinkhorn_knopp
from acclimate.ssl.tokens import MaskToken, embed_tokens, encode_tokens, pooled

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


# --- losses against the references ---------------------------------------------------------------


def reference_ibot(s: Tensor, t: Tensor, masks: Tensor, student_temp: float) -> Tensor:
    """iBOT (Zhou et al. 2022, Eq. 2) with DINOv2's normalisation, one patch at a time:
    -1/B sum_b 1/|M_b| sum_{i in M_b} sum_k t_bik log softmax(s_bi / tau)_k."""
    total, row = 0.0, 0
    for b in range(masks.shape[0]):
        idx = masks[b].nonzero().flatten()
        image = 0.0
        for _ in idx:
            logp = s[row] / student_temp - torch.logsumexp(s[row] / student_temp, dim=0)
            image = image - (t[row] * logp).sum()
            row += 1
        total = total + (image / len(idx) if len(idx) else 0.0)
    return total / masks.shape[0]


def test_ibot_loss_equals_reference() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 9, generator=g) < 0.4
    masks[2] = False  # an unmasked image counts in the mean with 0
    m, k = int(masks.sum()), 17
    s = torch.randn(m, k, generator=g, dtype=torch.float64) * 2
    t = torch.softmax(torch.randn(m, k, generator=g, dtype=torch.float64) / 0.07, dim=-1)
    loss = IBOTLoss(student_temp=0.1)(s, t, masks)
    torch.testing.assert_close(loss, reference_ibot(s, t, masks, 0.1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        IBOTLoss(student_temp=0)


def reference_koleo(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Sablayrolles et al. 2019, Eq. 3: -1/n sum_i log(min_{j != i} ||f_i - f_j||), f normalised."""
    f = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(f, f) + torch.diag(torch.full((len(f),), math.inf, dtype=f.dtype))
    return -torch.log(d.min(dim=1).values + eps).mean()


def test_koleo_loss_equals_reference() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(11, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(KoLeoLoss()(x).double(), reference_koleo(x), rtol=1e-5, atol=1e-6)
    spread = torch.eye(4)  # orthogonal features are further apart than a tight cluster
    tight = torch.ones(4, 4) + 0.01 * torch.randn(4, 4, generator=g)
    assert KoLeoLoss()(spread) < KoLeoLoss()(tight)
    x.requires_grad_(True)
    KoLeoLoss()(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _masked_forward(vit, images: Tensor, masks: Tensor, token: Tensor) -> Tensor:
    """timm's own ``forward_features`` with the masked patch embeddings replaced by ``token``
    (iBOT / BEiT masking, before the position embeddings) -> tokens (B, P + N, D)."""

    def replace(_module, _inputs, out: Tensor) -> Tensor:  # (B, h, w, D) with dynamic_img_size
        return torch.where(masks.reshape(*out.shape[:-1], 1), token.reshape(-1), out)

    handle = vit.patch_embed.register_forward_hook(replace)
    try:
        return vit.forward_features(images)
    finally:
        handle.remove()


def _cross_entropy(probs: Tensor, logits: Tensor, temp: float) -> Tensor:
    """Mean over rows of ``-sum_k probs_k log softmax(logits / temp)_k``."""
    return -(probs * F.log_softmax(logits / temp, dim=-1)).sum(-1).mean()


def reference_dinov2(
    module: DINOv2,
    teacher_crops: list[Tensor],
    student_crops: list[Tensor],
    local_crops: list[Tensor],
    masks: Tensor,
    centre: Tensor | None,
    ibot_centre: Tensor | None,
    teacher_temp: float,
    teacher_scale: float = 1.0,
    student_temp: float = 0.1,
    ibot_weight: float = 1.0,
    koleo_weight: float = 0.1,
    logits: dict[str, Tensor] | None = None,
) -> Tensor:
    """DINOv2's loss from its parts (Oquab et al. 2023). The teacher sees the unmasked global
    crops (upsampled by ``teacher_scale``, its patch tokens area-averaged onto the student's
    grid); the student sees the global crops with ``masks`` (G * B, N) and the local crops.

    ``L = DINO + w_ibot iBOT + w_koleo KoLeo``: DINO is the cross-entropy of the student's class
    logits (every view) against the teacher's (every other global view); iBOT is
    ``1/(G B) sum_b 1/|M_b| sum_{i in M_b} H(t_bi, s_bi)`` at the masked patches (Zhou et al.
    2022); KoLeo is summed over the student's class tokens of each global crop. Teacher targets
    are ``softmax((t - centre) / temp)``, or Sinkhorn-Knopp (3 rounds) when the centres are None.
    Patch tokens go through the iBOT heads when the module has them, else the DINO heads.
    ``logits``, if given, receives the teacher's class logits and masked-patch logits (what the
    centres follow)."""
    vit, teacher = module.backbone, module.teacher_backbone
    head, t_head = module.head, module.teacher_head
    patch_head, t_patch_head = head, t_head
    if module.ibot_head is not None:
        patch_head, t_patch_head = module.ibot_head, module.teacher_ibot_head
    p, patch = vit.num_prefix_tokens, vit.patch_embed.patch_size[0]
    h, w = (s // patch for s in student_crops[0].shape[-2:])
    t_in = torch.cat(teacher_crops)
    if teacher_scale != 1.0:
        t_in = F.interpolate(t_in, scale_factor=teacher_scale, mode="bilinear")
    k = t_in.shape[-2] // patch // h  # teacher patches per student patch, along each side

    def targets(logits: Tensor, c: Tensor | None) -> Tensor:
        if c is None:
            return reference_sinkhorn(logits, teacher_temp, 3)
        return torch.softmax((logits - c) / teacher_temp, dim=-1)

    with torch.no_grad():
        t_tokens = teacher.eval().forward_features(t_in)
        t_cls_logits = t_head(t_tokens[:, 0])
        t_cls = targets(t_cls_logits, centre).chunk(len(teacher_crops))
        t_grid = t_tokens[:, p:].reshape(len(t_in), h, k, w, k, -1).mean(dim=(2, 4))
        t_patches = t_patch_head(t_grid.reshape(len(t_in), h * w, -1))
    s_tokens = _masked_forward(vit, torch.cat(student_crops), masks, module.mask_token.weight)
    s_class = s_tokens[:, 0]
    s_cls = head(torch.cat([s_class, *(vit(x) for x in local_crops)]))
    s_cls = s_cls.chunk(len(student_crops) + len(local_crops))
    pairs = [(i, v) for i in range(len(t_cls)) for v in range(len(s_cls)) if v != i]
    dino = sum(_cross_entropy(t_cls[i], s_cls[v], student_temp) for i, v in pairs) / len(pairs)
    s_patches = patch_head(s_tokens[:, p:])
    rows = [(b, i) for b in range(len(masks)) for i in masks[b].nonzero().flatten().tolist()]
    s_rows = torch.stack([s_patches[b, i] for b, i in rows])
    t_rows_logits = torch.stack([t_patches[b, i] for b, i in rows])
    t_rows = targets(t_rows_logits, ibot_centre)
    if logits is not None:
        logits |= {"class": t_cls_logits, "patches": t_rows_logits}
    ibot = reference_ibot(s_rows, t_rows, masks, student_temp)
    koleo = sum(reference_koleo(c) for c in s_class.chunk(len(student_crops)))
    return dino + ibot_weight * ibot + koleo_weight * koleo


# --- masks, Sinkhorn-Knopp ------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(4, 4), (8, 8), (6, 10)])
def test_block_masks_respect_ratio_bounds(grid: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    n = grid[0] * grid[1]
    lo, hi = 0.1, 0.5
    masks = block_masks(32, grid, (lo, hi), mask_prob=0.5, generator=g)
    assert masks.shape == (32, n) and masks.dtype == torch.bool
    counts = masks.sum(1)
    assert int((counts > 0).sum()) == 16  # mask_prob of the images
    masked = counts[counts > 0].float() / n
    assert masked.min() >= max(math.floor(lo * n), 1) / n and masked.max() <= hi
    assert masked.max() - masked.min() > 0.15  # stratified over the range


def test_block_mask_is_blocky_and_exact() -> None:
    g = torch.Generator().manual_seed(3)
    mask = block_mask((14, 14), 60, generator=g)
    assert int(mask.sum()) == 60
    # blocks: most masked patches have a masked neighbour (random masks at 30% would not)
    padded = F.pad(mask.float()[None, None], (1, 1, 1, 1))
    neighbours = F.conv2d(padded, torch.tensor([[[[0, 1, 0], [1, 0, 1], [0, 1, 0]]]]).float())
    assert (neighbours[0, 0][mask] >= 2).float().mean() > 0.8
    assert block_masks(4, (4, 4), mask_prob=0.0).sum() == 0
    with pytest.raises(ValueError):
        block_masks(4, (4, 4), mask_ratio=(0.6, 0.5))


def reference_sinkhorn(logits: Tensor, temp: float, n_iters: int) -> Tensor:
    """``sinkhorn_knopp_teacher`` of facebookresearch/dinov2 (one process)."""
    q = torch.exp(logits / temp).t()
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(n_iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def test_sinkhorn_equals_reference_and_balances() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(24, 10, generator=g, dtype=torch.float64)
    p = sinkhorn_knopp(logits, 0.5, n_iters=3)
    torch.testing.assert_close(p.double(), reference_sinkhorn(logits, 0.5, 3), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(p.sum(1), torch.ones(24))
    many = sinkhorn_knopp(logits, 0.5, n_iters=200)  # prototypes used equally
    torch.testing.assert_close(many.sum(0), torch.full((10,), 2.4), rtol=1e-3, atol=1e-3)
    sharp = sinkhorn_knopp(logits * 50, 0.04)  # exp would overflow without the shift
    assert torch.isfinite(sharp).all()


# --- the masked forward ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_vit", "vit_small_patch14_reg4_dinov2"])
def test_masked_forward_matches_timm_and_masks_patches_only(name: str) -> None:
    torch.manual_seed(0)
    vit = create_backbone(name).eval()
    size = 2 * vit.patch_embed.patch_size[0]
    x = torch.randn(2, 3, size, size)
    token = MaskToken(vit.embed_dim)
    with torch.no_grad():
        token.weight.normal_()
        plain = embed_tokens(vit, x)
        assert plain.shape[1] == vit.num_prefix_tokens + 4  # registers are prefix tokens
        torch.testing.assert_close(pooled(vit, encode_tokens(vit, plain)), vit(x))
        mask = torch.tensor([[True, False, False, True], [False] * 4])
        masked = embed_tokens(vit, x, mask, token())
    p = vit.num_prefix_tokens
    assert torch.equal(masked[:, :p], plain[:, :p])  # class and register tokens untouched
    assert torch.equal(masked[1], plain[1])
    assert torch.equal(masked[0, p + 1 : p + 3], plain[0, p + 1 : p + 3])
    # a masked patch is the mask token plus that patch's position embedding
    pos = plain[0, p] - vit.patch_embed(x)[0].reshape(4, -1)[0]
    torch.testing.assert_close(masked[0, p], token.weight[0] + pos)


# --- layer-wise learning-rate decay ---------------------------------------------------------------


def test_layer_decay_param_groups() -> None:
    vit = timm.create_model("test_vit", num_classes=0)
    plain = param_groups(vit, lr_scale=0.1)
    assert len(plain) == 2 and [g["lr_scale"] for g in plain] == [0.1, 0.1]  # unchanged default
    groups = param_groups(vit, lr_scale=0.1, layer_decay=0.5, patch_embed_lr_mult=0.2)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    n_blocks = len(vit.blocks)  # stem = layer 0, block i = layer i + 1, of n_blocks + 1 layers
    params = dict(vit.named_parameters())
    assert scale[id(params["blocks.5.attn.qkv.weight"])] == pytest.approx(0.1 * 0.5)
    assert scale[id(params["blocks.0.attn.qkv.weight"])] == pytest.approx(0.1 * 0.5**n_blocks)
    assert scale[id(params["cls_token"])] == pytest.approx(0.1 * 0.5 ** (n_blocks + 1))
    stem = 0.1 * 0.5 ** (n_blocks + 1) * 0.2
    assert scale[id(params["patch_embed.proj.weight"])] == pytest.approx(stem)
    assert {id(p) for p in params.values()} == set(scale)
    no_wd = {id(p) for g in groups if not g["apply_wd"] for p in g["params"]}
    assert id(params["blocks.0.norm1.weight"]) in no_wd and id(params["pos_embed"]) not in no_wd
    with pytest.raises(ValueError):
        OptimSettings(layer_decay=1.5)


# --- a module-level step with registers and Sinkhorn ---------------------------------------------


def test_dinov2_step_with_registers_and_sinkhorn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DINOv2, "backbone_frozen", property(lambda self: False))  # no trainer
    torch.manual_seed(0)
    vit = create_backbone("vit_small_patch14_reg4_dinov2")
    module = DINOv2(
        vit,
        batch_size=4,
        out_dim=32,
        hidden_dim=32,
        bottleneck_dim=16,
        centering="sinkhorn_knopp",
        ibot_separate_head=True,
        mask_prob=1.0,
        optim=OptimSettings(freeze_backbone_epochs=0),
    )
    module.log = module.log_dict = lambda *a, **k: None
    module.teacher_temperature = lambda: 0.04
    module.teacher_momentum = lambda: 0.99
    drawn = []  # the real block masks, kept for the reference

    def recorded(*args, **kwargs) -> Tensor:
        drawn.append(block_masks(*args, **kwargs))
        return drawn[-1].clone()

    monkeypatch.setattr("acclimate.ssl.dinov2.block_masks", recorded)
    views = {
        "global": [torch.randn(4, 3, 28, 28) for _ in range(2)],
        "local": [torch.randn(4, 3, 14, 14)],
    }
    loss = module.training_step((views, None), 0)
    assert len(drawn) == 1 and drawn[0].shape == (8, 4) and drawn[0].any(1).all()
    with torch.no_grad():  # Sinkhorn-Knopp targets, the class token after the 4 registers
        expected = reference_dinov2(
            module, views["global"], views["global"], views["local"], drawn[0], None, None, 0.04
        )
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert module.mask_token.weight.grad.abs().sum() > 0
    assert module.ibot_head.mlp[0].weight.grad.abs().sum() > 0
    assert module.backbone.reg_token.grad.abs().sum() > 0


def test_mask_token_trains_during_frozen_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head warm-up: no gradient reaches the backbone, but the mask token gets one."""
    monkeypatch.setattr(DINOv2, "backbone_frozen", property(lambda self: True))  # no trainer
    torch.manual_seed(0)
    module = DINOv2(
        create_backbone("test_vit"),
        batch_size=4,
        out_dim=32,
        hidden_dim=32,
        bottleneck_dim=16,
        mask_prob=1.0,
        optim=OptimSettings(freeze_backbone_epochs=1.0),
    )
    module.log = module.log_dict = lambda *a, **k: None
    module.teacher_temperature = lambda: 0.04
    module.teacher_momentum = lambda: 0.99
    views = {
        "global": [torch.randn(4, 3, 32, 32) for _ in range(2)],
        "local": [torch.randn(4, 3, 16, 16)],
    }
    trainable = [p for p in module.backbone.parameters() if p.requires_grad]
    loss = module.training_step((views, None), 0)
    assert all(p.requires_grad for p in trainable)  # restored after the forward
    loss.backward()
    assert module.mask_token.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.backbone.parameters())


# --- through the real CLI -----------------------------------------------------------------------

RECIPE = """
name: tiny-dinov2
backbone:
  name: {backbone}
  weights: {weights}
data:
  train: {data}
  image_size: {size}
  batch_size: 6
  num_workers: 0
augment:
  n_local: 2
  local_size: {local}
  global_scale: [0.5, 1.0]
  preset: satellite
method:
  name: dinov2
  out_dim: 64
  hidden_dim: 32
  bottleneck_dim: 16
  mask_prob: 0.5
  freeze_last_layer_epochs: 0
optim:
  freeze_backbone_epochs: {freeze}
  warmup_epochs: 0
  layer_decay: 0.9
  patch_embed_lr_mult: 0.2
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


def _state(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_dinov2_trains_through_cli_and_exports(tmp_path: Path, tiny_dataset: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    start = timm.create_model("test_vit", num_classes=0)
    weights = tmp_path / "start.safetensors"
    save_file(start.state_dict(), str(weights))
    recipe = tmp_path / "dinov2.yaml"
    text = RECIPE.format(
        backbone="test_vit", weights=weights, data=tiny_dataset, size=64, local=32, freeze=0
    )
    recipe.write_text(text)
    run = tmp_path / "run"
    assert main(["train", str(recipe), f"run_dir={run}"]) == 0
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    student = {
        k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if k[:9] == "backbone."
    }
    changed = [k for k, v in start.state_dict().items() if not torch.equal(v, student[k])]
    assert "blocks.0.attn.qkv.weight" in changed and "patch_embed.proj.weight" in changed
    assert "mask_token.weight" in ckpt["state_dict"]
    metrics = json.loads((run / "metrics.json").read_text())
    before, after = metrics["before"], metrics["after"]
    assert after["n_test"] == 18 and after["linear_top1"] >= 0.8  # 3 colour classes: chance 1/3
    delta = after["linear_top1"] - before["linear_top1"]
    assert metrics["delta"]["linear_top1"] == pytest.approx(delta)

    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    stock = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    teacher = {
        k[len("teacher_backbone.") :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("teacher_backbone.")
    }
    for k, v in stock.state_dict().items():
        assert torch.equal(v, teacher[k]), k
    with torch.no_grad():
        assert stock(torch.randn(1, 3, 64, 64)).shape == (1, 64)


def test_continuation_from_official_dinov2_checkpoint_keeps_weights(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """Official naming (with mask_token), 37x37 position grid, trained on 28 px crops: the
    loaded weights are the student's and the teacher's, and survive a frozen-backbone run."""
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch14_dinov2", num_classes=0).eval()
    official = dict(ref.state_dict()) | {"mask_token": torch.randn(1, 384)}
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official, path)
    recipe_path = tmp_path / "cont.yaml"
    recipe_path.write_text(
        RECIPE.format(
            backbone="vit_small_patch14_dinov2",
            weights=path,
            data=tiny_dataset,
            size=28,
            local=14,
            freeze=10,
        )
    )
    recipe = load_recipe(recipe_path, [f"run_dir={tmp_path / 'run'}", "trainer.max_steps=2"])
    backbone = construct(recipe, "backbone", create_backbone)
    module = construct(recipe, "method", DINOv2, backbone=backbone, batch_size=6, optim=None)
    want = ref.state_dict()
    for net in (module.backbone, module.teacher_backbone):
        got = net.state_dict()
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k
    assert module.backbone.pos_embed.shape[1] == 1 + 37 * 37  # kept, resampled per crop
    assert torch.equal(module.mask_token.weight, official["mask_token"])  # released, not zero
    assert PRETRAINED_MASK_TOKEN not in module.backbone.state_dict()  # stock timm layout

    run = tmp_path / "run"
    assert main(["train", str(recipe_path), f"run_dir={run}", "trainer.max_steps=2"]) == 0
    export = tmp_path / "export"
    assert main(["export", str(run), "--out", str(export)]) == 0
    exported = load_file(str(export / "model.safetensors"))
    for k in want:  # backbone frozen for the whole run: the EMA teacher is unchanged, exactly
        assert torch.equal(exported[k], want[k]), k


@pytest.mark.parametrize("method", ["dinov2", "mae"])
def test_masked_methods_on_a_cnn_fail_at_config_time(
    tmp_path: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture, method: str
) -> None:
    recipe = tmp_path / "cnn.yaml"
    text = RECIPE.format(
        backbone="test_resnet", weights="null", data=tiny_dataset, size=32, local=16, freeze=0
    )
    head, rest = text.split("method:\n", 1)
    recipe.write_text(f"{head}method:\n  name: {method}\n{rest[rest.index('optim:') :]}")
    code = main(["train", str(recipe), f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert f"method.name: {method}" in err and "needs a timm ViT" in err and "test_resnet" in err
    assert not (tmp_path / "run").exists()
