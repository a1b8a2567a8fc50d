"""Each method's ``training_step`` against an independent reference on the same weights, crops
and masks: which network sees which views, the masks, the centres, temperatures and
stop-gradients. A wiring error (local crops to the teacher, swapped views, a stale centre, a
mask that is not the encoder's) changes the value; each test also checks that its reference
moves under such errors. Last, a few optimiser steps on one fixed batch lower every method's
loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import stub_trainer
from test_contrastive import reference_byol, reference_moco_v3, reference_ntxent
from test_dino import reference_dino_loss
from test_dinov2 import reference_dinov2
from test_distill import reference_smooth_l1
from test_mae import reference_mae_loss, reference_patchify
from torch import Tensor

from acclimate.backbones import create_backbone
from acclimate.ssl import BYOL, DINO, MAE, DINOv2, Distill, MoCoV3, OptimSettings, SimCLR

OPTIM = OptimSettings(freeze_backbone_epochs=0, warmup_epochs=0)


def _attach(module):
    stub_trainer(module)
    module.train()
    module.set_backbone_mode(module.backbone)  # as on_train_batch_start: BN stays pretrained
    return module


def _crops(n_local=2, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    globals_ = [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]
    locals_ = [torch.randn(b, 3, 16, 16, generator=g) for _ in range(n_local)]
    return {"global": globals_, "local": locals_}, torch.zeros(b, dtype=torch.long)


def assert_wiring_matters(loss: Tensor, wrong: dict[str, Tensor | None], gap: float) -> None:
    """Each mis-wired reference is at least ``gap`` away from the step's loss (the step matches
    the right one far more closely), so the equality above could not hold by accident."""
    for name, value in wrong.items():
        if value is not None:
            assert (loss - value).abs() > gap, f"{name}: {loss.item()} vs {value.item()}"


def test_dino_step_equals_the_official_loss_on_the_same_weights():
    torch.manual_seed(0)
    module = _attach(
        DINO(create_backbone("test_resnet"), 4, OPTIM, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    )
    with torch.no_grad():  # a non-zero centre, so that centring is part of the check
        module.center.center.copy_(0.1 * torch.randn(1, 32))
    center = module.center.center.clone()
    batch = _crops(n_local=3)
    views, _ = batch
    loss = module.training_step(batch, 0)
    with torch.no_grad():
        teacher = module.teacher_head(module.teacher_backbone(torch.cat(views["global"])))
        student = torch.cat(
            [
                module.head(module.backbone(torch.cat(views["global"]))),
                module.head(module.backbone(torch.cat(views["local"]))),
            ]
        )
    expected = reference_dino_loss(student, teacher, center, 5, 0.1, 0.04)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_simclr_step_equals_algorithm_1():
    torch.manual_seed(0)
    module = _attach(
        SimCLR(create_backbone("test_resnet"), 4, OPTIM, proj_hidden_dim=16, proj_dim=8)
    )
    batch = _crops(n_local=0)
    x1, x2 = batch[0]["global"]
    state = {k: v.clone() for k, v in module.state_dict().items()}
    loss = module.training_step(batch, 0)
    module.load_state_dict(state)  # undo the BN running-statistics updates of the step
    with torch.no_grad():
        z1, z2 = module.projector(module.backbone(torch.cat([x1, x2]))).chunk(2)
    torch.testing.assert_close(loss.detach(), reference_ntxent(z1, z2, 0.1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [MoCoV3, BYOL])
def test_momentum_methods_step_equals_their_papers_loss(cls):
    torch.manual_seed(0)
    module = _attach(cls(create_backbone("test_resnet"), 4, OPTIM, hidden_dim=16, dim=8))
    batch = _crops(n_local=0)
    x1, x2 = batch[0]["global"]
    state = {k: v.clone() for k, v in module.state_dict().items()}
    loss = module.training_step(batch, 0)
    loss.backward()  # the teacher (keys / targets) gets no gradient from the step
    assert all(p.grad is None for p in module.teacher_backbone.parameters())
    assert any(p.grad is not None for p in module.backbone.parameters())
    module.load_state_dict(state)  # undo the BN running-statistics updates of the step
    with torch.no_grad():
        f = module.backbone(torch.cat([x1, x2]))
        p1, p2 = (module.predictor(module.projector(v)) for v in f.chunk(2))
        module.teacher_mode(module.teacher_backbone)
        t = module.teacher_backbone(torch.cat([x1, x2]))
        z1, z2 = (module.teacher_projector(v) for v in t.chunk(2))
    if cls is MoCoV3:
        expected = reference_moco_v3(p1, p2, z1, z2, 0.2)
    else:
        expected = reference_byol(p1, p2, z1, z2)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)


def test_swapped_or_local_views_would_be_caught():
    """The DINO reference is sensitive to the wiring it checks."""
    torch.manual_seed(0)
    module = _attach(
        DINO(create_backbone("test_resnet"), 4, OPTIM, out_dim=32, hidden_dim=16, bottleneck_dim=8)
    )
    batch = _crops(n_local=2)
    views, _ = batch
    loss = module.training_step(batch, 0).detach()
    with torch.no_grad():
        wrong_teacher = module.teacher_head(module.teacher_backbone(torch.cat(views["local"])))
        student = torch.cat(
            [
                module.head(module.backbone(torch.cat(views["global"]))),
                module.head(module.backbone(torch.cat(views["local"]))),
            ]
        )
    wrong = reference_dino_loss(student, wrong_teacher, torch.zeros(1, 32), 4, 0.1, 0.04)
    assert not torch.allclose(loss, wrong, rtol=1e-3)
    assert F.mse_loss(loss, wrong) > 0


# --- DINOv2: DINO on class tokens + iBOT on masked patches + KoLeo (Oquab et al. 2023) --------


def _fixed_masks(n_images: int, n: int) -> Tensor:
    """Fixed masks (G * B, N): images 0, 2, 5, 7 with 3, 6, 1 and 8 masked patches, the rest
    none (their shape does not matter to the loss, only which patches they cover)."""
    masks = torch.zeros(n_images, n, dtype=torch.bool)
    for image, patches in {
        0: [0, 1, 5],
        2: [2, 3, 6, 7, 10, 11],
        5: [15],
        7: list(range(8)),
    }.items():
        masks[image, patches] = True
    return masks


@pytest.mark.parametrize("teacher_scale", [1.0, 2.0])
def test_dinov2_step_equals_dino_ibot_koleo_on_the_same_masks(
    monkeypatch: pytest.MonkeyPatch, teacher_scale: float
) -> None:
    torch.manual_seed(0)
    module = _attach(
        DINOv2(
            create_backbone("test_vit"),
            4,
            OPTIM,
            out_dim=32,
            hidden_dim=16,
            bottleneck_dim=8,
            teacher_temp=0.06,
            warmup_teacher_temp=0.04,
            teacher_scale=teacher_scale,
        )
    )
    with torch.no_grad():  # non-zero centres and mask token, a teacher that is not the student
        module.center.center.copy_(0.1 * torch.randn(1, 32))
        module.ibot_center.center.copy_(0.1 * torch.randn(1, 32))
        module.mask_token.weight.normal_()
        for param in module.teacher_backbone.parameters():
            param.add_(0.05 * torch.randn_like(param))
    centre, ibot_centre = module.center.center.clone(), module.ibot_center.center.clone()
    g = torch.Generator().manual_seed(1)
    globals_ = [torch.randn(4, 3, 64, 64, generator=g) for _ in range(2)]  # 4 x 4 patches
    locals_ = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    masks = _fixed_masks(8, 16)
    calls = []

    def fixed_block_masks(n_images, grid, mask_ratio, mask_prob, generator=None):
        calls.append((n_images, tuple(grid)))
        return masks.clone()

    monkeypatch.setattr("acclimate.ssl.dinov2.block_masks", fixed_block_masks)
    batch = ({"global": globals_, "local": locals_}, torch.zeros(4, dtype=torch.long))
    loss = module.training_step(batch, 0).detach()
    assert calls == [(8, (4, 4))]  # one mask per student global crop, on the student's grid

    def reference(**changes) -> Tensor:
        args = dict(
            teacher_crops=globals_,
            student_crops=globals_,
            local_crops=locals_,
            masks=masks,
            centre=centre,
            ibot_centre=ibot_centre,
            teacher_temp=0.06,
            teacher_scale=teacher_scale,
        )
        with torch.no_grad():
            return reference_dinov2(module, **(args | changes))

    teacher_logits: dict[str, Tensor] = {}
    torch.testing.assert_close(loss, reference(logits=teacher_logits), rtol=1e-5, atol=1e-5)
    module.after_optimizer_step()  # each centre follows its teacher logits, once per step
    for c, start, key in (
        (module.center, centre, "class"),
        (module.ibot_center, ibot_centre, "patches"),
    ):
        expected = 0.9 * start + 0.1 * teacher_logits[key].mean(0, keepdim=True)
        torch.testing.assert_close(c.center, expected, rtol=1e-5, atol=1e-6)
    # the reference is sensitive to the wiring it checks
    wrong = {
        "teacher views swapped": reference(teacher_crops=globals_[::-1]),
        "no centring": reference(centre=torch.zeros(1, 32), ibot_centre=torch.zeros(1, 32)),
        "DINO's centre for iBOT": reference(ibot_centre=centre),
        "masks of other crops": reference(masks=masks.roll(1, 0)),
        "warm-up temperature": reference(teacher_temp=0.04),
        "teacher not upsampled": reference(teacher_scale=1.0) if teacher_scale != 1 else None,
    }
    assert_wiring_matters(loss, wrong, 1e-3)  # the equality holds to about 1e-4


# --- MAE: normalised-pixel MSE on the masked patches (He et al. 2022) ------------------------


def reference_mae(module: MAE, images: Tensor, keep: Tensor, on_visible: bool = False) -> Tensor:
    """The encoder sees the class token and the visible patches ``keep`` (B, N_keep) only
    (timm's ``patch_drop`` slot, after the position embeddings); the decoder predicts every
    patch; the loss is the official ``forward_loss`` (normalised pixels, masked patches; the
    visible ones with ``on_visible``, a wiring error)."""
    vit = module.backbone
    p, patch = vit.num_prefix_tokens, vit.patch_embed.patch_size[0]
    rows = torch.arange(len(images))[:, None]

    def drop(_module, _inputs, tokens: Tensor) -> Tensor:
        return torch.cat([tokens[:, :p], tokens[:, p:][rows, keep]], dim=1)

    handle = vit.patch_drop.register_forward_hook(drop)
    try:
        latent = vit.forward_features(images)
    finally:
        handle.remove()
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    pred = module.decoder(latent, keep, grid, p)
    mask = torch.ones(len(images), grid[0] * grid[1])
    mask[rows, keep] = 0.0
    if on_visible:
        mask = 1.0 - mask
    return reference_mae_loss(images, pred, mask, patch, norm_pix=True)


@torch.no_grad()
def _fit_decoder_output(module: MAE, images: Tensor, keep: Tensor, mask: Tensor) -> None:
    """Fit the decoder's last layer to this batch's masked targets (least squares), so that the
    right wiring scores far lower than a wrong one (a random decoder scores about 1 + E[pred^2]
    whatever it is given)."""
    inputs: list[Tensor] = []
    hook = module.decoder.pred.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    reference_mae(module, images, keep)
    hook.remove()
    z = inputs[0][mask]  # (M, decoder_dim) at the masked patches
    target = reference_patchify(images, 16)[mask]
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    solution = torch.linalg.lstsq(torch.cat([z, torch.ones(len(z), 1)], 1), target).solution
    module.decoder.pred.weight.copy_(solution[:-1].T)
    module.decoder.pred.bias.copy_(solution[-1])


def test_mae_step_equals_the_official_loss_on_the_same_mask(monkeypatch) -> None:
    torch.manual_seed(0)
    module = _attach(
        MAE(create_backbone("test_vit"), 4, OPTIM, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    )
    g = torch.Generator().manual_seed(2)
    keep = torch.stack([torch.randperm(16, generator=g)[:4] for _ in range(4)])  # random order
    mask = torch.ones(4, 16, dtype=torch.bool).scatter(1, keep, False)
    x = [torch.randn(4, 3, 64, 64, generator=g) for _ in range(2)]  # 4 x 4 patches
    _fit_decoder_output(module, x[0], keep, mask)
    calls = []

    def fixed_masking(n_images, n_patches, mask_ratio, device=None):
        calls.append((n_images, n_patches, mask_ratio))
        return keep.clone(), mask.clone()

    monkeypatch.setattr("acclimate.ssl.mae.random_masking", fixed_masking)
    batch = ({"global": x, "local": [torch.randn(4, 3, 32, 32, generator=g)]}, None)
    loss = module.training_step(batch, 0).detach()
    assert calls == [(4, 16, 0.75)]
    with torch.no_grad():
        torch.testing.assert_close(loss, reference_mae(module, x[0], keep), rtol=1e-5, atol=1e-5)
        wrong = {
            "the second global crop": reference_mae(module, x[1], keep),
            "another image's mask": reference_mae(module, x[0], keep.roll(1, 0)),
            "loss on the visible patches": reference_mae(module, x[0], keep, on_visible=True),
        }
    assert_wiring_matters(loss, wrong, 1e-3)


# --- distillation: the frozen teacher's embeddings of the (resized) views --------------------


@pytest.mark.parametrize(
    ("loss_kind", "teacher_name", "resize"),
    [
        ("cosine", "test_vit", {"teacher_scale": 2.0}),  # the student's start, seeing 2x
        ("smooth_l1", "test_resnet", {"teacher_image_size": 48}),  # BatchNorm: eval mode
    ],
)
def test_distill_step_regresses_the_frozen_teachers_embeddings(
    loss_kind: str, teacher_name: str, resize: dict
) -> None:
    torch.manual_seed(0)
    student = create_backbone("test_vit")
    module = _attach(Distill(student, 4, OPTIM, teacher_name, None, loss=loss_kind, **resize))
    if teacher_name == "test_vit":  # embeddings that correlate with the student's
        module.teacher.load_state_dict(student.state_dict())
    teacher_state = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    views = [torch.randn(4, 3, 32, 32, generator=g) + 0.5 for _ in range(2)]
    batch = ({"global": views, "local": [torch.randn(4, 3, 16, 16, generator=g)]}, None)
    loss = module.training_step(batch, 0).detach()
    for k, v in module.teacher.state_dict().items():  # frozen: BatchNorm statistics untouched
        assert torch.equal(v, teacher_state[k]), k

    def reference(
        student_in: Tensor, teacher_in: Tensor, teacher_train: bool = False, resized: bool = True
    ) -> Tensor:
        """``mean_b d(P f_s(x_b), f_t(resize(x_b)))`` on unit vectors: d = 1 - cos, or the
        smooth-L1 distance summed over dimensions (beta 0.1)."""
        if resized and "teacher_scale" in resize:
            size = [round(s * resize["teacher_scale"]) for s in teacher_in.shape[-2:]]
            teacher_in = F.interpolate(teacher_in, size=size, mode="bilinear")
        elif resized:
            side = resize["teacher_image_size"]
            teacher_in = F.interpolate(teacher_in, (side, side), mode="bilinear", antialias=True)
        with torch.no_grad():
            target = module.teacher.train(teacher_train)(teacher_in)
            module.teacher.load_state_dict(teacher_state)  # undo train-mode statistics
            s = module.projection(module.backbone(student_in))
        if loss_kind == "cosine":
            return (1 - F.cosine_similarity(s, target, dim=-1)).mean()
        return reference_smooth_l1(s, target, 0.1)

    x = torch.cat(views)
    torch.testing.assert_close(loss, reference(x, x), rtol=1e-5, atol=1e-5)
    wrong = {
        "teacher views swapped": reference(x, torch.cat(views[::-1])),
        "teacher at the native size": reference(x, x, resized=False)
        if resize.get("teacher_scale")
        else None,
        "teacher in train mode": reference(x, x, True) if teacher_name == "test_resnet" else None,
    }
    assert_wiring_matters(loss, wrong, 1e-3)


# --- every method: a few steps on one fixed batch lower its loss ----------------------------


def _vit():
    return create_backbone("test_vit")


DINO_HEAD = dict(out_dim=32, hidden_dim=32, bottleneck_dim=16, freeze_last_layer_epochs=0)
METHOD_MAKERS = {
    "dino": lambda: DINO(_vit(), 8, OPTIM, **DINO_HEAD),
    "dinov2": lambda: DINOv2(_vit(), 8, OPTIM, **DINO_HEAD, mask_prob=1.0),
    "mae": lambda: MAE(_vit(), 8, OPTIM, decoder_dim=32, decoder_depth=1, decoder_heads=4),
    "simclr": lambda: SimCLR(_vit(), 8, OPTIM, proj_hidden_dim=32, proj_dim=16),
    "moco_v3": lambda: MoCoV3(_vit(), 8, OPTIM, hidden_dim=32, dim=16),
    "byol": lambda: BYOL(_vit(), 8, OPTIM, hidden_dim=32, dim=16),
    "distill": lambda: Distill(_vit(), 8, OPTIM, "test_resnet", None),
}


@pytest.mark.parametrize("name", list(METHOD_MAKERS))
def test_steps_on_a_fixed_batch_lower_the_loss(name: str) -> None:
    """The module's own hooks (training step, backward hook, optimiser step with its EMA and
    centre updates) with Adam on one batch and fixed masks: the loss must fall, which a sign
    error or a graph cut before the trained parts would prevent."""
    torch.manual_seed(0)
    module = _attach(METHOD_MAKERS[name]())
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    batch = _crops(n_local=2, b=8)
    losses = []
    for step in range(10):
        module._trainer.global_step = step

        def closure(step: int = step) -> Tensor:
            optimizer.zero_grad()
            torch.manual_seed(1)  # the same masks at every step
            loss = module.training_step(batch, step)
            loss.backward()
            module.on_after_backward()
            losses.append(loss.item())
            return loss

        module.optimizer_step(0, step, optimizer, closure)
    assert losses[-1] < 0.9 * losses[0], losses
