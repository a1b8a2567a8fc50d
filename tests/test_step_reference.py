"""Each method's ``training_step`` against an independent reference on the same weights and
crops: which network sees which views, the centre, temperatures and stop-gradients. A wiring
error (local crops to the teacher, swapped views, a stale centre) changes the value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import stub_trainer
from test_contrastive import reference_byol, reference_moco_v3, reference_ntxent
from test_dino import reference_dino_loss

from acclimate.backbones import create_backbone
from acclimate.ssl import BYOL, DINO, MoCoV3, OptimSettings, SimCLR

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
