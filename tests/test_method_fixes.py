"""Method details checked against the papers' code: the DINO centre once per optimiser step,
teachers' BatchNorm on batch statistics, MAE's AdamW betas, an absolute min_lr, MoCo v3's
ViT predictor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import stub_trainer
from torch import nn

from acclimate.backbones import create_backbone
from acclimate.ssl import DINO, MAE, MoCoV3, OptimSettings
from acclimate.ssl.center import Center


def test_center_accumulates_micro_batches_into_one_update():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(8, 5, generator=g)
    whole, parts = Center(5, 0.9), Center(5, 0.9)
    whole.update(t)
    parts.accumulate(t[:3])
    parts.accumulate(t[3:])
    assert torch.equal(parts.center, torch.zeros(1, 5))  # nothing before the step
    parts.step()
    torch.testing.assert_close(parts.center, whole.center)
    torch.testing.assert_close(whole.center, 0.1 * t.mean(0, keepdim=True))
    parts.step()  # nothing pending: unchanged
    torch.testing.assert_close(parts.center, whole.center)


def _dino(**kw):
    torch.manual_seed(0)
    optim = OptimSettings(freeze_backbone_epochs=0, warmup_epochs=0, **kw.pop("optim", {}))
    module = DINO(
        create_backbone("test_resnet"), 4, optim, out_dim=16, hidden_dim=16, bottleneck_dim=8, **kw
    )
    return stub_trainer(module, accumulate=2)


def _views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"global": [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]}, None


def test_dino_centre_moves_once_per_optimiser_step_under_accumulation():
    module = _dino()
    opt = module.build_optimizer()
    start = module.center.center.clone()
    for i in range(2):  # two micro-batches of one optimiser step
        module.training_step(_views(i), i)
        assert torch.equal(module.center.center, start)
    # the same as one centre update over both micro-batches' teacher outputs (the teacher
    # before the step's EMA update)
    with torch.no_grad():
        module.teacher_mode(module.teacher_backbone, module.teacher_head)
        outs = [
            module.teacher_head(module.teacher_backbone(torch.cat(_views(i)[0]["global"])))
            for i in range(2)
        ]
    expected = 0.9 * start + 0.1 * torch.cat(outs).mean(0, keepdim=True)
    module.optimizer_step(0, 0, opt, lambda: None)
    moved = module.center.center.clone()
    assert not torch.equal(moved, start)
    torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("freeze", [True, False])
def test_teacher_batchnorm_uses_batch_statistics_unless_frozen(freeze):
    module = _dino(optim={"freeze_norm_stats": freeze}, use_bn_in_head=True)
    module.teacher_mode(module.teacher_backbone, module.teacher_head)
    bns = [m for m in module.teacher_backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.training is not freeze for m in bns)
    head_bns = [m for m in module.teacher_head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert head_bns and all(m.training for m in head_bns)  # heads: batch statistics always
    assert not module.teacher_backbone.training  # no dropout / drop-path in the teacher


def test_mae_uses_the_papers_adamw_betas():
    mae = MAE(
        create_backbone("test_vit"), 4, None, decoder_dim=16, decoder_depth=1, decoder_heads=2
    )
    assert stub_trainer(mae).build_optimizer().defaults["betas"] == (0.9, 0.95)
    assert _dino().build_optimizer().defaults["betas"] == (0.9, 0.999)


def test_min_lr_is_absolute_while_the_peak_scales_with_the_batch():
    module = _dino(optim={"lr": 1e-3, "min_lr": 1e-5})
    end = module.scheduled_lr(20, False)  # the end of the schedule
    assert end == pytest.approx(1e-5, rel=1e-3)
    module.optim.warmup_epochs = 0
    peak = module.scheduled_lr(0, False)
    assert peak == pytest.approx(1e-3 * 4 * 2 / 256)  # batch 4 x accumulation 2


def test_moco_v3_predictor_ends_in_affine_free_bn_for_vits_only():
    vit = MoCoV3(create_backbone("test_vit"), 4, None, hidden_dim=16, dim=8)
    cnn = MoCoV3(create_backbone("test_resnet"), 4, None, hidden_dim=16, dim=8)

    def last_bn(head):
        last = list(head.modules())[-1]
        return isinstance(last, nn.modules.batchnorm._BatchNorm) and not last.affine

    assert last_bn(vit.predictor) and not last_bn(cnn.predictor)
    assert last_bn(vit.projector) and last_bn(cnn.projector)


@pytest.mark.parametrize(
    ("name", "kw", "final"), [("test_vit", {}, "norm"), ("test_vit", {"global_pool": "avg"}, None)]
)
def test_layer_decay_as_dinov2_final_norm_full_rate_last_block_one_factor(name, kw, final):
    import timm

    from acclimate.ssl.optim import param_groups

    vit = timm.create_model(name, num_classes=0, **kw)
    final = final or "fc_norm"  # global_pool avg: the final norm after pooling
    groups = param_groups(vit, lr_scale=1.0, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(vit.named_parameters())
    n = len(vit.blocks)
    assert scale[id(params[f"{final}.weight"])] == 1.0  # DINOv2: decay^0
    assert scale[id(params[f"blocks.{n - 1}.attn.qkv.weight"])] == 0.5
    assert scale[id(params["blocks.0.attn.qkv.weight"])] == 0.5**n
    assert scale[id(params["cls_token"])] == 0.5 ** (n + 1)


def _with_grads(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.grad = 10 * torch.randn(p.shape, generator=g)
    return {n: p.grad.clone() for n, p in module.named_parameters()}


def test_dino_clips_each_parameter_as_its_code_does():
    module = _dino()
    assert module.clip_rule() == "per_param"
    before = _with_grads(module)
    module.configure_gradient_clipping(None, 3.0)
    for n, p in module.named_parameters():  # reference: DINO's utils.clip_gradients
        g = before[n]
        coef = 3.0 / (g.norm(2) + 1e-6)
        torch.testing.assert_close(p.grad, g * coef if coef < 1 else g)


def test_dinov2_clips_per_module_and_contrastive_methods_not_at_all():
    from acclimate.ssl.dinov2 import DINOv2

    torch.manual_seed(0)
    small = dict(out_dim=16, hidden_dim=16, bottleneck_dim=8)
    v2 = DINOv2(create_backbone("test_vit"), 4, OptimSettings(), **small)
    assert v2.clip_rule() == "per_module"
    _with_grads(v2)
    v2.configure_gradient_clipping(None, 3.0)
    for params in v2.clip_groups():
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        assert norm == pytest.approx(3.0, rel=1e-4)
    moco = MoCoV3(create_backbone("test_vit"), 4, None, hidden_dim=16, dim=8)
    assert moco.clip_rule() == "none"
    before = _with_grads(moco)
    moco.configure_gradient_clipping(None, 3.0)
    assert all(torch.equal(p.grad, before[n]) for n, p in moco.named_parameters())
    forced = MoCoV3(create_backbone("test_vit"), 4, OptimSettings(clip_rule="global"), dim=8)
    _with_grads(forced)
    forced.clip_gradients = lambda opt, val, alg: setattr(forced, "clipped", (val, alg))
    forced.configure_gradient_clipping(None, 3.0)
    assert forced.clipped == (3.0, "norm")


def test_each_rank_draws_its_own_masks_after_a_common_initialisation():
    """RNGState seeds ``seed + rank`` at the start of training (MAE, DINOv2 do the same): image
    i gets a different mask on every rank, while weights initialised before agree."""
    from acclimate.resume import RNGState
    from acclimate.ssl.masking import block_masks, random_masking

    drawn = []
    for rank in (0, 1):
        torch.manual_seed(0)  # the common seed of initialisation
        init = torch.randn(3)
        RNGState(seed=0).on_train_start(SimpleNamespace(global_rank=rank), None)
        drawn.append((init, block_masks(8, (4, 4), (0.1, 0.5), 1.0), random_masking(8, 16, 0.75)))
    (init0, block0, mae0), (init1, block1, mae1) = drawn
    assert torch.equal(init0, init1)
    assert not torch.equal(block0, block1)
    assert not torch.equal(mae0[1], mae1[1])


def test_weight_decay_and_teacher_temperature_schedules():
    module = _dino(
        optim={"weight_decay": 0.04, "weight_decay_end": 0.4},
        teacher_temp=0.07,
        warmup_teacher_temp=0.04,
        warmup_teacher_temp_epochs=1.0,
    )
    trainer = module._trainer  # 10 batches, accumulation 2: 5 steps per epoch, 20 steps in all
    values = []
    for step in (0, 5, 10, 20):
        trainer.global_step = step
        values.append((module.scheduled_wd(step), module.teacher_temperature()))
    (wd0, t0), (wd5, t5), (wd10, _), (wd20, t20) = values
    assert wd0 == pytest.approx(0.04) and wd20 == pytest.approx(0.4)
    assert wd10 == pytest.approx(0.22)  # cosine: half-way at half the steps
    assert t0 == pytest.approx(0.04) and t5 == pytest.approx(0.07) and t20 == pytest.approx(0.07)


def test_channels_last_gives_the_same_loss_and_features():
    from acclimate.backbones.layout import channels_last, channels_last_for, is_channels_last
    from acclimate.eval.features import extract_features

    plain = _dino()
    fast = _dino()
    channels_last(fast)
    assert is_channels_last(fast.backbone) and not is_channels_last(plain.backbone)
    a = plain.training_step(_views(), 0)
    b = fast.training_step(_views(), 0)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    batches = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    f_plain, _ = extract_features(plain.backbone, batches)
    assert not is_channels_last(plain.backbone)  # extraction restores the layout it changed
    f_fast, _ = extract_features(fast.backbone, batches)
    torch.testing.assert_close(f_plain, f_fast, rtol=1e-5, atol=1e-5)
    with channels_last_for(plain.backbone):
        assert is_channels_last(plain.backbone)
    assert not is_channels_last(plain.backbone)


def test_dinov2_mask_token_trains_as_the_stem_not_as_a_head():
    """DINOv2's ``get_vit_lr_decay_rate`` gives ``mask_token`` layer 0: the backbone's LR
    multiplier and the deepest layer decay, as the patch embedding, not the head's LR."""
    from acclimate.ssl.dinov2 import DINOv2

    torch.manual_seed(0)
    optim = OptimSettings(backbone_lr_mult=0.1, layer_decay=0.5)
    v2 = DINOv2(create_backbone("test_vit"), 4, optim, out_dim=16, hidden_dim=16, bottleneck_dim=8)
    opt = stub_trainer(v2).build_optimizer()
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    token = group_of[id(v2.mask_token.weight)]
    patch = group_of[id(v2.backbone.patch_embed.proj.weight)]
    head = group_of[id(v2.head.mlp[0].weight)]
    n_blocks = len(v2.backbone.blocks)
    assert token["lr_scale"] == pytest.approx(0.1 * 0.5 ** (n_blocks + 1))
    assert token["lr_scale"] == pytest.approx(patch["lr_scale"])
    assert token["is_backbone"] and token["apply_wd"] and head["lr_scale"] == 1.0


def test_dinov2_recipe_keys_follow_its_kwargs_to_dino():
    """DINOv2 passes DINO's arguments through ``**dino``: the recipe schema still has them all,
    with DINO's defaults, and still refuses unknown keys."""
    from acclimate.config import signature_params
    from acclimate.ssl.dinov2 import DINOv2

    params = signature_params(DINOv2)
    dino = signature_params(DINO)
    assert set(dino) <= set(params)
    assert params["out_dim"] == dino["out_dim"] and params["teacher_scale"][1] == 1.0
    assert "ibot_weight" in params and "dino" not in params


def test_the_step_schedule_sets_each_groups_lr_and_weight_decay_per_optimiser_step():
    """Lightning steps `StepSchedule` once per optimiser step: after k steps each group has
    ``scheduled_lr(k) * lr_scale`` and the scheduled weight decay where it applies, 0 elsewhere;
    its state (the step) survives a checkpoint, its functions are rebuilt."""
    from acclimate.ssl.schedules import StepSchedule

    module = _dino(optim={"weight_decay": 0.04, "weight_decay_end": 0.4})
    module.optim.warmup_epochs = 1.0
    configured = module.configure_optimizers()
    opt, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "step"
    schedule.refresh()
    for k in range(4):
        for g in opt.param_groups:
            want = module.scheduled_lr(k, g["is_backbone"]) * g["lr_scale"]
            assert g["lr"] == pytest.approx(want)
            assert g["weight_decay"] == (
                pytest.approx(module.scheduled_wd(k)) if g["apply_wd"] else 0
            )
        schedule.step()
    assert opt.param_groups[-1]["lr"] > 0  # warm-up under way
    names = [g["name"] for g in opt.param_groups]
    assert len(set(names)) == len(names) and "head" in names and "backbone" in names
    again = StepSchedule(module.build_optimizer(), module.scheduled_lr, module.scheduled_wd)
    again.load_state_dict(schedule.state_dict())
    assert again.last_epoch == 4 and "lr_at" not in schedule.state_dict()
