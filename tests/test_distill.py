"""Distillation: the loss against its formula, the teacher (any backbone or an acclimate export,
resized input, kept out of checkpoints), and a run from the real recipe through the real CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import stub_trainer
from test_contrastive import tiny_overrides, train_export_check
from torch import Tensor, nn

from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.export import export_backbone
from acclimate.export.meta import read_export_meta
from acclimate.ssl import METHODS, Distill, OptimSettings
from acclimate.ssl.distill import input_channels
from acclimate.ssl.losses import EmbeddingDistillLoss

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

NO_WARMUP = OptimSettings(freeze_backbone_epochs=0)


def reference_smooth_l1(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """Huber on unit vectors: 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta, summed over D."""
    d = (s / s.norm(dim=1, keepdim=True) - t / t.norm(dim=1, keepdim=True)).abs()
    per = torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)
    return per.sum(1).mean()


def test_distill_loss_equals_reference() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2))
    cosine = EmbeddingDistillLoss("cosine")(s, t)
    torch.testing.assert_close(cosine, (1 - F.cosine_similarity(s, t)).mean())
    for beta in (0.05, 1.0):
        smooth = EmbeddingDistillLoss("smooth_l1", beta)(s, t)
        torch.testing.assert_close(smooth, reference_smooth_l1(s, t, beta))
    assert EmbeddingDistillLoss()(s, 3 * s).item() == pytest.approx(0.0, abs=1e-12)  # scale-free
    with pytest.raises(ValueError, match="cosine"):
        EmbeddingDistillLoss("l2")  # type: ignore[arg-type]


def test_teacher_is_frozen_and_projection_matches_widths() -> None:
    module = Distill(create_backbone("test_vit"), 4, NO_WARMUP, "test_resnet", None)
    assert METHODS["distill"] is Distill
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert isinstance(module.projection, nn.Linear)
    assert (module.projection.in_features, module.projection.out_features) == (64, 96)
    optimised = {id(p) for g in module.build_optimizer().param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in module.teacher.parameters())

    same = Distill(create_backbone("test_vit"), 4, NO_WARMUP, "test_vit", None)
    assert isinstance(same.projection, nn.Identity)
    forced = Distill(create_backbone("test_vit"), 4, None, "test_vit", None, projection="linear")
    assert isinstance(forced.projection, nn.Linear)
    with pytest.raises(ValueError, match="freeze_backbone_epochs"):
        Distill(create_backbone("test_vit"), 4, OptimSettings(), "test_vit", None)


def test_teacher_layers_add_a_term_per_stage() -> None:
    """``teacher_layers: k``: the student's pooled embedding also predicts the pooled outputs of
    the teacher's last k stages through one linear head; the loss is the mean of the pooled
    term and the mean of the stage terms, and only student and heads get gradients."""
    torch.manual_seed(0)
    module = Distill(
        create_backbone("test_vit"), 4, NO_WARMUP, "test_resnet", None, teacher_layers=2
    )
    widths = [f["num_chs"] for f in module.teacher.feature_info][-2:]
    assert module.layer_widths == widths
    assert module.layer_head.in_features == 64 and module.layer_head.out_features == sum(widths)
    optimised = {id(p) for g in module.build_optimizer().param_groups for p in g["params"]}
    assert {id(p) for p in module.layer_head.parameters()} <= optimised
    stub_trainer(module)
    module.train()
    module.set_backbone_mode(module.backbone)
    x = torch.randn(4, 3, 32, 32)
    batch = ({"global": [x[:2], x[2:]]}, torch.zeros(4, dtype=torch.long))
    loss = module.training_step(batch, 0)
    loss.backward()
    with torch.no_grad():
        feats = module.backbone(x)
        pooled, parts = (
            module.teacher(x),
            module.teacher.forward_intermediates(x, indices=2, norm=True, intermediates_only=True),
        )
        cos = lambda s, t: (1 - F.cosine_similarity(s, t)).mean()  # noqa: E731
        preds = module.layer_head(feats).split(widths, 1)
        stages = sum(cos(p, t.mean((2, 3))) for p, t in zip(preds, parts, strict=True)) / 2
        pooled_term = cos(module.projection(feats), pooled)
        expected = (pooled_term + stages) / 2
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    assert (loss - pooled_term).abs() > 1e-3 and (loss - stages).abs() > 1e-3  # both count
    assert all(p.grad is None for p in module.teacher.parameters())
    assert module.layer_head.weight.grad is not None
    assert any(p.grad is not None for p in module.backbone.parameters())


def test_teacher_layers_deeper_than_the_teacher_is_refused() -> None:
    with pytest.raises(ValueError, match=r"method.teacher_layers: last9: .* choose last1 to"):
        Distill(create_backbone("test_vit"), 4, NO_WARMUP, "test_resnet", None, teacher_layers=9)
    with pytest.raises(ValueError, match="whole number"):
        Distill(create_backbone("test_vit"), 4, NO_WARMUP, "test_resnet", None, teacher_layers=-1)


def test_teacher_in_chans_follows_the_student() -> None:
    student = create_backbone("test_resnet", in_chans=1)
    assert input_channels(student) == 1
    module = Distill(student, 4, NO_WARMUP, "test_vit", None)
    assert input_channels(module.teacher) == 1


def test_teacher_sees_the_views_resized() -> None:
    module = Distill(create_backbone("test_vit"), 4, NO_WARMUP, "test_resnet", None, 48)
    seen: list[tuple[int, ...]] = []
    module.teacher.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    out = module.teacher_embed(torch.randn(3, 3, 32, 32))
    assert seen == [(3, 3, 48, 48)] and out.shape == (3, 96) and not out.requires_grad


def test_teacher_from_an_export_folder(tmp_path) -> None:
    torch.manual_seed(3)
    big = create_backbone("test_resnet")
    folder = export_backbone(
        big, tmp_path / "teacher", mean=[0.5] * 3, std=[0.2] * 3, image_size=32
    )
    module = Distill(create_backbone("test_vit"), 4, NO_WARMUP, "test_resnet", str(folder))
    for k, v in big.state_dict().items():
        assert torch.equal(module.teacher.state_dict()[k], v), k


def test_distill_from_recipe_exports_a_plain_student(tmp_path, tiny_dataset) -> None:
    torch.manual_seed(4)
    teacher = export_backbone(
        create_backbone("test_resnet"),
        tmp_path / "teacher",
        mean=[0.5] * 3,
        std=[0.25] * 3,
        image_size=32,
    )
    overrides = tiny_overrides(tmp_path, tiny_dataset) + [
        "method.teacher_name=test_resnet",
        f"method.teacher_weights={teacher}",
        "method.teacher_image_size=48",
        "method.loss=smooth_l1",
    ]
    # smooth-L1 on unit vectors summed over the teacher's 96 dimensions: at most |d|_1 <= 2 sqrt(96)
    export = train_export_check(tmp_path, "distill.yaml", overrides, "test_vit", (0.0, 2 * 96**0.5))
    run = tmp_path / "run"
    # the export names the network it holds: the student (distill's teacher is the frozen start)
    assert read_export_meta(export)["source"].endswith("last.ckpt (student)")
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("teacher.") for k in saved["state_dict"])  # rebuilt on resume
    assert any(k.startswith("projection.") for k in saved["state_dict"])
    assert main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == 0
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * saved["global_step"]
