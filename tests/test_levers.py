"""The levers for a pretrained start: a teacher that sees the views upsampled
(``method.teacher_scale``) and an anchor to the frozen start (``method.anchor_weight``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import stub_trainer

from acclimate.backbones import create_backbone
from acclimate.ssl import BYOL, DINO, MAE, MoCoV3, OptimSettings, SimCLR
from acclimate.ssl.anchor import StartAnchor, upsample
from acclimate.ssl.dinov2 import DINOv2, pool_tokens

OPTIM = OptimSettings(freeze_backbone_epochs=0, warmup_epochs=0)
SMALL = {
    DINO: dict(out_dim=16, hidden_dim=16, bottleneck_dim=8),
    DINOv2: dict(out_dim=16, hidden_dim=16, bottleneck_dim=8, mask_prob=1.0),
    MoCoV3: dict(hidden_dim=16, dim=8),
    BYOL: dict(hidden_dim=16, dim=8),
    SimCLR: dict(proj_hidden_dim=16, proj_dim=8),
    MAE: dict(decoder_dim=16, decoder_depth=1, decoder_heads=2),
}
HAS_TEACHER = [DINO, DINOv2, MoCoV3, BYOL]


def _module(cls, backbone="test_vit", small=None, **kw):
    torch.manual_seed(0)
    module = cls(create_backbone(backbone), 4, OPTIM, **(small or SMALL[cls]), **kw)
    stub_trainer(module)
    return module


def _batch(size=32, n_local=2):
    g = torch.Generator().manual_seed(1)
    views = {
        "global": [torch.randn(4, 3, size, size, generator=g) for _ in range(2)],
        "local": [torch.randn(4, 3, 16, 16, generator=g) for _ in range(n_local)],
    }
    return views, torch.zeros(4, dtype=torch.long)


def test_upsample_shapes():
    x = torch.randn(2, 3, 32, 24)
    assert upsample(x, 1.0) is x
    assert upsample(x, 2.5).shape == (2, 3, 80, 60)


@pytest.mark.parametrize("cls", HAS_TEACHER)
def test_teacher_sees_upsampled_views_and_gets_no_gradient(cls):
    module = _module(cls, teacher_scale=2.0)
    teacher_in, student_in = [], []
    module.teacher_backbone.patch_embed.register_forward_hook(
        lambda m, i, o: teacher_in.append(tuple(i[0].shape[-2:]))
    )
    module.backbone.patch_embed.register_forward_hook(
        lambda m, i, o: student_in.append(tuple(i[0].shape[-2:]))
    )
    loss = module.training_step(_batch(), 0)
    loss.backward()
    assert teacher_in and set(teacher_in) == {(64, 64)}  # global crops only, twice the side
    assert (32, 32) in student_in and (64, 64) not in student_in
    assert all(p.grad is None for p in module.teacher_backbone.parameters())
    assert any(p.grad is not None for p in module.backbone.parameters())


def test_distill_teacher_scale(tmp_path):
    from acclimate.ssl import Distill

    torch.manual_seed(0)
    module = Distill(
        create_backbone("test_resnet"),
        4,
        OptimSettings(freeze_backbone_epochs=0),
        teacher_name="test_resnet",
        teacher_weights=None,
        teacher_scale=3.0,
    )
    seen = []
    module.teacher.register_forward_pre_hook(lambda m, i: seen.append(i[0].shape[-1]))
    module.teacher_embed(torch.randn(2, 3, 32, 32))
    assert seen == [96]
    with pytest.raises(ValueError, match="not both"):
        Distill(
            create_backbone("test_resnet"),
            4,
            None,
            teacher_name="test_resnet",
            teacher_weights=None,
            teacher_image_size=64,
            teacher_scale=2.0,
        )


def test_pool_tokens_averages_patches_onto_the_student_grid():
    tokens = torch.arange(16.0).reshape(1, 16, 1)  # a 4x4 grid of one channel
    pooled = pool_tokens(tokens, (4, 4), (2, 2))
    assert pooled.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert pool_tokens(tokens, (4, 4), (4, 4)) is tokens


def test_anchor_is_zero_at_the_start_and_pulls_a_perturbed_student_back():
    student = create_backbone("test_resnet").eval()
    anchor = StartAnchor(student)
    x = torch.randn(6, 3, 32, 32)
    assert anchor(x, student(x)).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * torch.randn_like(p))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    before = anchor(x, student(x)).item()
    assert before > 1e-3
    for _ in range(20):
        opt.zero_grad()
        anchor(x, student(x)).backward()
        opt.step()
    assert anchor(x, student(x)).item() < 0.5 * before
    assert all(not p.requires_grad for p in anchor.net.parameters())


@pytest.mark.parametrize("cls", [DINO, DINOv2, MoCoV3, BYOL, SimCLR, MAE])
def test_anchor_term_is_added_to_every_method(cls):
    # DINOv2's anchor compares its masked student with the start on whole crops: unmasked here
    kw = {**SMALL[cls], "mask_prob": 0.0} if cls is DINOv2 else SMALL[cls]
    plain = _module(cls, small=kw)
    anchored = _module(cls, small=kw, anchor_weight=2.0)
    # perturb the student of both alike, so that the anchor term is not zero
    for m in (plain, anchored):
        with torch.no_grad():
            for p in m.backbone.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    torch.manual_seed(3)
    a = plain.training_step(_batch(), 0)
    torch.manual_seed(3)
    b = anchored.training_step(_batch(), 0)
    images = torch.cat(_batch()[0]["global"][:1] if cls is MAE else _batch()[0]["global"])
    with torch.no_grad():
        feats = anchored.backbone(images)
        term = anchored.anchor(images, feats)
    assert term.item() > 0
    assert b.item() == pytest.approx(a.item() + 2.0 * term.item(), rel=1e-4, abs=1e-5)


def test_anchor_stays_out_of_checkpoints_and_comes_back_on_load():
    module = _module(DINO, anchor_weight=1.0)
    checkpoint = {"state_dict": module.state_dict()}
    assert any(k.startswith("anchor.") for k in checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("anchor.") for k in checkpoint["state_dict"])
    fresh = _module(DINO, anchor_weight=1.0)
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: nothing missing
    a, b = module.anchor.state_dict(), fresh.anchor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lever_values_are_checked():
    with pytest.raises(ValueError, match="teacher_scale"):
        _module(DINO, teacher_scale=0.5)
    with pytest.raises(ValueError, match="anchor_weight"):
        _module(MoCoV3, anchor_weight=-1.0)


def test_upsampled_teacher_features_differ_from_native():
    """The lever changes the targets (a cheap check that the scale reaches the teacher)."""
    module = _module(DINO, backbone="test_resnet", teacher_scale=3.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        native = module.teacher_backbone(x)
        scaled = module.teacher_backbone(module.teacher_view(x))
    assert F.cosine_similarity(native, scaled).mean() < 0.9999
