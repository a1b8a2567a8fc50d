"""DINO: the loss against the paper's formula, its parts, and the module trained for a few steps."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from acclimate.backbones import create_backbone
from acclimate.ssl import DINO, OptimSettings
from acclimate.ssl.center import Center
from acclimate.ssl.dino import forward_by_size
from acclimate.ssl.ema import cosine_momentum, update_ema
from acclimate.ssl.heads import DINOHead
from acclimate.ssl.losses import DINOLoss
from acclimate.ssl.optim import param_groups
from acclimate.ssl.schedules import linear_warmup, warmup_cosine

# Lightning's own use of a deprecated torch.utils._pytree name
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


# --- the loss against the reference ------------------------------------------------------------


def reference_dino_loss(
    student_output: Tensor,
    teacher_output: Tensor,
    center: Tensor,
    n_crops: int,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """``DINOLoss.forward`` of the official code (Caron et al. 2021, facebookresearch/dino).

    student_output: (n_crops * B, K), global views first; teacher_output: (2 * B, K).
    """
    student_out = (student_output / student_temp).chunk(n_crops)
    teacher_out = F.softmax((teacher_output - center) / teacher_temp, dim=-1).detach().chunk(2)
    total_loss, n_loss_terms = 0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue  # the same view seen by teacher and student
            loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


@pytest.mark.parametrize("n_local", [0, 1, 6])
def test_dino_loss_equals_reference(n_local: int) -> None:
    g = torch.Generator().manual_seed(n_local)
    b, k, n_crops = 5, 37, 2 + n_local
    student = torch.randn(n_crops * b, k, generator=g, dtype=torch.float64) * 3
    teacher = torch.randn(2 * b, k, generator=g, dtype=torch.float64) * 3
    center = torch.randn(1, k, generator=g, dtype=torch.float64)

    loss = DINOLoss(student_temp=0.1)(
        list(student.chunk(n_crops)), list(teacher.chunk(2)), center, teacher_temp=0.04
    )
    expected = reference_dino_loss(student, teacher, center, n_crops, 0.1, 0.04)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_dino_loss_temperatures_matter() -> None:
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4 * 3, 11, generator=g, dtype=torch.float64)
    teacher = torch.randn(2 * 3, 11, generator=g, dtype=torch.float64)
    center = torch.zeros(1, 11, dtype=torch.float64)
    loss = DINOLoss(student_temp=0.2)(list(student.chunk(4)), list(teacher.chunk(2)), center, 0.07)
    expected = reference_dino_loss(student, teacher, center, 4, 0.2, 0.07)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_dino_loss_uniform_is_log_k() -> None:
    k = 16
    zeros = [torch.zeros(3, k) for _ in range(4)]
    loss = DINOLoss()(zeros, zeros[:2], torch.zeros(1, k), 0.04)
    torch.testing.assert_close(loss, torch.tensor(math.log(k)))


def test_dino_loss_gradient_reaches_student_only() -> None:
    student = [torch.randn(3, 8, requires_grad=True) for _ in range(3)]
    teacher = [torch.randn(3, 8, requires_grad=True) for _ in range(2)]
    DINOLoss()(student, teacher, torch.zeros(1, 8), 0.04).backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in student)
    assert all(t.grad is None for t in teacher)


def test_dino_loss_needs_two_views() -> None:
    x = [torch.randn(2, 4)]
    with pytest.raises(ValueError, match="two views"):
        DINOLoss()(x, x, torch.zeros(1, 4), 0.04)
    with pytest.raises(ValueError, match="student_temp"):
        DINOLoss(student_temp=0)


# --- centre, EMA, schedules --------------------------------------------------------------------


def test_center_update() -> None:
    c = Center(dim=6, momentum=0.9)
    assert torch.equal(c(), torch.zeros(1, 6))
    first, second = torch.randn(10, 6), torch.randn(4, 6)
    c.update(first)
    expected = 0.1 * first.mean(0, keepdim=True)
    torch.testing.assert_close(c(), expected)
    c.update(second)
    torch.testing.assert_close(c(), 0.9 * expected + 0.1 * second.mean(0, keepdim=True))
    assert "center" in c.state_dict()  # saved with checkpoints
    with pytest.raises(ValueError):
        Center(4, momentum=1.0)


def _bn_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_update_ema_parameters_and_buffers() -> None:
    torch.manual_seed(0)
    teacher, student = _bn_net(), _bn_net()
    student.train()
    for _ in range(3):  # BN running statistics and num_batches_tracked move in the student
        student(torch.randn(8, 4) * 2 + 1)
    teacher[1].num_batches_tracked.fill_(7)
    before = copy.deepcopy(teacher.state_dict())

    update_ema(teacher, student, momentum=0.75)
    s = student.state_dict()
    for name, t in teacher.state_dict().items():
        if t.dtype.is_floating_point:
            torch.testing.assert_close(t, 0.75 * before[name] + 0.25 * s[name], msg=name)
        else:
            assert torch.equal(t, s[name]), name  # integer buffers are copied
    assert teacher[1].num_batches_tracked.item() == 3
    # the parameters themselves were updated in place, not a copy of them
    torch.testing.assert_close(teacher[0].weight, 0.75 * before["0.weight"] + 0.25 * s["0.weight"])


def test_update_ema_leaves_frozen_parameters_untouched() -> None:
    """Parameters the student does not train are not averaged (no fp32 drift, no cost); weights
    that did not move stay bit-identical."""
    torch.manual_seed(2)
    teacher = _bn_net()
    student = copy.deepcopy(teacher)
    student[0].requires_grad_(False)
    with torch.no_grad():
        student[0].weight.add_(1.0)  # a frozen parameter that differs: still not averaged
    before = copy.deepcopy(teacher.state_dict())
    for _ in range(1000):
        update_ema(teacher, student, momentum=0.996)
    t = teacher.state_dict()
    assert torch.equal(t["0.weight"], before["0.weight"])
    assert all(torch.equal(t[k], before[k]) for k in ("0.bias", "3.weight", "3.bias"))


def test_update_ema_extreme_momenta() -> None:
    torch.manual_seed(1)
    teacher, student = _bn_net(), _bn_net()
    frozen = copy.deepcopy(teacher.state_dict())
    update_ema(teacher, student, momentum=1.0)
    for name, t in teacher.state_dict().items():
        if t.dtype.is_floating_point:
            assert torch.equal(t, frozen[name]), name
    update_ema(teacher, student, momentum=0.0)
    for name, t in teacher.state_dict().items():
        assert torch.equal(t, student.state_dict()[name]), name


def test_cosine_momentum_endpoints() -> None:
    total = 11
    assert cosine_momentum(0, total, 0.996, 1.0) == pytest.approx(0.996, abs=1e-12)
    assert cosine_momentum(total - 1, total, 0.996, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert cosine_momentum(5, total, 0.996, 1.0) == pytest.approx(0.998, abs=1e-12)
    values = [cosine_momentum(s, total, 0.99, 1.0) for s in range(total)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert cosine_momentum(50, total, 0.99, 1.0) == 1.0  # clamped past the end
    assert cosine_momentum(0, 1, 0.99, 0.995) == 0.995  # a single step: the final value


def test_warmup_cosine_values() -> None:
    total, warm, base, final = 100, 10, 1e-3, 1e-6
    assert warmup_cosine(0, total, base, final, warm) == 0.0
    assert warmup_cosine(0, total, base, final, warm, start=1e-4) == pytest.approx(1e-4)
    assert warmup_cosine(5, total, base, final, warm) == pytest.approx(base / 2)
    assert warmup_cosine(warm, total, base, final, warm) == pytest.approx(base)
    assert warmup_cosine(55, total, base, final, warm) == pytest.approx((base + final) / 2)
    assert warmup_cosine(total, total, base, final, warm) == pytest.approx(final)
    assert warmup_cosine(total + 10, total, base, final, warm) == pytest.approx(final)
    assert warmup_cosine(0, total, base, final) == pytest.approx(base)  # no warm-up


def test_linear_warmup() -> None:
    assert linear_warmup(0, 10, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(5, 10, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(10, 10, 0.04, 0.07) == 0.07
    assert linear_warmup(3, 0, 0.04, 0.07) == 0.07


# --- head and parameter groups -----------------------------------------------------------------


def test_dino_head_shape_and_fixed_norm() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=24, out_dim=50, hidden_dim=32, bottleneck_dim=8)
    out = head(torch.randn(5, 24))
    assert out.shape == (5, 50)
    g = head.last_layer.parametrizations.weight.original0
    assert torch.equal(g, torch.ones_like(g))
    assert not g.requires_grad
    # unit-norm prototypes times an L2-normalised bottleneck: cosine similarities
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    assert out.abs().max() <= 1.0 + 1e-5
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original1" in trainable
    assert "last_layer.parametrizations.weight.original0" not in trainable


def test_dino_head_options() -> None:
    head = DINOHead(24, 50, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    assert head.last_layer.parametrizations.weight.original0.requires_grad
    bn = DINOHead(24, 50, hidden_dim=32, bottleneck_dim=8, n_layers=2, use_bn=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 1
    single = DINOHead(24, 50, bottleneck_dim=8, n_layers=1)
    assert [type(m) for m in single.mlp] == [nn.Linear]
    assert single(torch.randn(2, 24)).shape == (2, 50)
    with pytest.raises(ValueError):
        DINOHead(24, 50, n_layers=0)


def test_param_groups_no_decay_for_biases_and_norms() -> None:
    net = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    net[3].weight.requires_grad_(False)
    groups = param_groups(net, lr_scale=0.1)
    decay, no_decay = groups
    assert decay["apply_wd"] and not no_decay["apply_wd"]
    assert all(g["lr_scale"] == 0.1 for g in groups)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight)}  # frozen net[3].weight left out
    expected = [net[0].bias, net[1].weight, net[1].bias, net[2].weight, net[2].bias, net[3].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}


def test_forward_by_size_keeps_view_order() -> None:
    calls = []

    def backbone(x: Tensor) -> Tensor:
        calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))

    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    out = forward_by_size(backbone, views)
    assert calls == [(4, 3, 8, 8), (2, 3, 4, 4)]  # one call per run of equal sizes
    torch.testing.assert_close(out, torch.cat([v.mean(dim=(2, 3)) for v in views]))


# --- the module, trained for a few steps on CPU --------------------------------------------------

BATCH, BATCHES_PER_EPOCH = 8, 4


class MultiCropViews(Dataset):
    """Random images already cropped as DINO's multi-crop gives them: 2 x 32 px + 2 x 16 px."""

    def __init__(self, n: int = BATCH * BATCHES_PER_EPOCH) -> None:
        g = torch.Generator().manual_seed(0)
        self.globals = torch.randn(n, 2, 3, 32, 32, generator=g)
        self.locals = torch.randn(n, 2, 3, 16, 16, generator=g)

    def __len__(self) -> int:
        return len(self.globals)

    def __getitem__(self, i: int) -> tuple[dict[str, list[Tensor]], int]:
        return {"global": list(self.globals[i]), "local": list(self.locals[i])}, i % 2


class Recorder(pl.Callback):
    """Learning rates, and whether the backbone got gradients and trained, at each step."""

    def __init__(self) -> None:
        self.backbone_lr: list[list[float]] = []
        self.head_lr: list[list[float]] = []
        self.backbone_grad: list[bool] = []
        self.backbone_training: list[bool] = []

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.backbone_grad.append(any(p.grad is not None for p in module.backbone.parameters()))
        self.backbone_training.append(module.backbone.training)
        groups = optimizer.param_groups
        self.backbone_lr.append([g["lr"] for g in groups if g.get("is_backbone")])
        self.head_lr.append([g["lr"] for g in groups if not g.get("is_backbone")])


def _module(name: str, optim: OptimSettings, **kwargs) -> DINO:
    torch.manual_seed(0)
    backbone = create_backbone(name)
    head = dict(out_dim=32, hidden_dim=32, bottleneck_dim=16)
    return DINO(backbone, batch_size=BATCH, optim=optim, **head, **kwargs)


def _fit(module: DINO, steps: int) -> Recorder:
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    loader = DataLoader(MultiCropViews(), batch_size=BATCH, shuffle=False)
    trainer.fit(module, loader)
    assert trainer.global_step == steps
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    return recorder


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


BACKBONES = pytest.mark.parametrize("name", ["test_resnet", "test_vit"])


@BACKBONES
def test_frozen_backbone_and_prototypes(name: str) -> None:
    """freeze_backbone_epochs and freeze_last_layer_epochs cover every step of the run."""
    optim = OptimSettings(warmup_epochs=0, freeze_backbone_epochs=1.0)
    module = _module(name, optim, freeze_last_layer_epochs=1.0)
    backbone, head = _state(module.backbone), _state(module.head)
    teacher = _state(module.teacher_backbone)
    last_layer = _state(module.head.last_layer)

    rec = _fit(module, steps=3)

    assert _same(_state(module.backbone), backbone)  # parameters and BN statistics
    assert not _same(_state(module.head), head)
    assert _same(_state(module.head.last_layer), last_layer)
    assert all(lr == 0.0 for step in rec.backbone_lr for lr in step)
    assert all(lr > 0.0 for step in rec.head_lr for lr in step)
    for k, v in _state(module.teacher_backbone).items():  # EMA of an unchanged student
        torch.testing.assert_close(v, teacher[k], msg=k)


@BACKBONES
def test_backbone_unfreezes_on_schedule(name: str) -> None:
    """Frozen for half an epoch (2 steps): backbone learning rate 0, then positive."""
    optim = OptimSettings(warmup_epochs=0, freeze_backbone_epochs=0.5)
    module = _module(name, optim, freeze_last_layer_epochs=0.5)
    backbone, last_layer = _state(module.backbone), _state(module.head.last_layer)

    rec = _fit(module, steps=4)

    assert [all(lr == 0.0 for lr in step) for step in rec.backbone_lr] == [1, 1, 0, 0]
    assert rec.backbone_grad == [False, False, True, True]  # no backward through it while frozen
    assert rec.backbone_training == [False, False, True, True]  # BN statistics kept while frozen
    assert not _same(_state(module.backbone), backbone)
    assert not _same(_state(module.head.last_layer), last_layer)
    assert not module.backbone_frozen


@BACKBONES
def test_one_step_trains_everything_and_teacher_follows_by_ema(name: str) -> None:
    m = 0.9  # constant momentum: the schedule's value at step 0 is then known exactly
    optim = OptimSettings(lr=5e-4, backbone_lr_mult=0.1, warmup_epochs=0, freeze_backbone_epochs=0)
    module = _module(
        name, optim, momentum_teacher=m, momentum_teacher_end=m, freeze_last_layer_epochs=0
    )
    start = {"backbone": _state(module.backbone), "head": _state(module.head)}
    assert _same(_state(module.teacher_backbone), start["backbone"])  # the teacher starts equal

    rec = _fit(module, steps=1)

    student = {"backbone": _state(module.backbone), "head": _state(module.head)}
    teacher = {"backbone": _state(module.teacher_backbone), "head": _state(module.teacher_head)}
    assert not _same(student["backbone"], start["backbone"])
    prototypes = "last_layer.parametrizations.weight.original1"
    assert not torch.equal(student["head"][prototypes], start["head"][prototypes])
    for part in ("backbone", "head"):
        assert not _same(teacher[part], start[part])
        for k, t in teacher[part].items():
            if t.dtype.is_floating_point:
                expected = m * start[part][k] + (1 - m) * student[part][k]
                torch.testing.assert_close(t, expected, msg=f"{part}.{k}")
            else:
                assert torch.equal(t, student[part][k]), k
    # learning rate per 256 images, scaled by batch * world / 256 (1 device, no accumulation)
    scale = BATCH * 1 / 256
    assert rec.head_lr[0] == [pytest.approx(5e-4 * scale)] * len(rec.head_lr[0])
    assert rec.backbone_lr[0] == [pytest.approx(5e-4 * scale * 0.1)] * len(rec.backbone_lr[0])


def test_lr_factor_counts_devices_and_accumulation() -> None:
    module = _module("test_resnet", OptimSettings())
    module._trainer = SimpleNamespace(world_size=4, accumulate_grad_batches=2)
    assert module.lr_factor() == BATCH * 4 * 2 / 256


def test_optimizer_covers_student_only() -> None:
    module = _module("test_resnet", OptimSettings())
    optimizer = module.build_optimizer()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    backbone = {id(p) for p in module.backbone.parameters()}
    head = {id(p) for p in module.head.parameters() if p.requires_grad}
    assert in_optimizer == backbone | head
    for g in optimizer.param_groups:
        is_backbone = g.get("is_backbone", False)
        assert is_backbone == ({id(p) for p in g["params"]} <= backbone)
        assert g["lr_scale"] == (module.optim.backbone_lr_mult if is_backbone else 1.0)
    teacher = list(module.teacher_backbone.parameters()) + list(module.teacher_head.parameters())
    assert not any(p.requires_grad for p in teacher)


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="momentum_teacher"):
        _module("test_resnet", OptimSettings(), momentum_teacher=0.999, momentum_teacher_end=0.99)
    with pytest.raises(ValueError, match="teacher_temp"):
        _module("test_resnet", OptimSettings(), teacher_temp=0.0)
