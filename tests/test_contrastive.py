"""SimCLR, MoCo v3 and BYOL: losses against the papers' formulas, the shared heads, and each method
trained for a few steps from its real recipe through the real CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.ssl import BYOL, MoCoV3, OptimSettings, SimCLR, distributed
from acclimate.ssl.distributed import SyncBatchNorm1d, gather_with_grad
from acclimate.ssl.heads import MLPHead
from acclimate.ssl.losses import BYOLLoss, MoCoV3Loss, NTXentLoss

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


# --- losses against the papers ----------------------------------------------------------------


def reference_ntxent(z1: Tensor, z2: Tensor, tau: float) -> Tensor:
    """SimCLR Algorithm 1, literally: views 2k-1 and 2k of image k, loop over pairs."""
    n = z1.shape[0]
    z = torch.stack([z1, z2], dim=1).reshape(2 * n, -1)  # z[2k], z[2k+1]: the two views of k
    s = [[F.cosine_similarity(z[i], z[j], dim=0) for j in range(2 * n)] for i in range(2 * n)]

    def ell(i: int, j: int) -> Tensor:
        den = sum(torch.exp(s[i][k] / tau) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(s[i][j] / tau) / den)

    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_ntxent_equals_simclr_algorithm_1(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(NTXentLoss(tau)(z1, z2), reference_ntxent(z1, z2, tau))


def test_ntxent_perfect_pairs_and_checks() -> None:
    e = torch.eye(4)  # orthogonal images, identical views: the loss is the log-sum of negatives
    loss = NTXentLoss(0.5)(e, e)
    expected = -math.log(math.exp(2) / (math.exp(2) + 6 * math.exp(0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)


def reference_moco_v3(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, tau: float) -> Tensor:
    """MoCo v3 Algorithm 1: ``ctr(q, k) = CrossEntropyLoss(q k^T / tau, arange(N)) * 2 tau``."""

    def ctr(q: Tensor, k: Tensor) -> Tensor:
        q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
        logits = torch.einsum("nc,mc->nm", q, k) / tau
        return nn.CrossEntropyLoss()(logits, torch.arange(q.shape[0])) * (2 * tau)

    return ctr(q1, k2) + ctr(q2, k1)


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_moco_v3_loss_equals_reference(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    q1, q2, k1, k2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    loss = MoCoV3Loss(tau)(q1, q2, k1, k2)
    torch.testing.assert_close(loss, reference_moco_v3(q1, q2, k1, k2, tau))


def test_moco_v3_keys_get_no_gradient() -> None:
    q1, q2, k1, k2 = (torch.randn(3, 4, requires_grad=True) for _ in range(4))
    MoCoV3Loss()(q1, q2, k1, k2).backward()
    assert q1.grad is not None and q2.grad is not None
    assert k1.grad is None and k2.grad is None


def reference_byol(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """BYOL Eq. 2: ``|| p/|p| - z'/|z'| ||^2``, plus the symmetric term (Eq. 4)."""

    def reg(p: Tensor, z: Tensor) -> Tensor:
        d = p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)
        return (d**2).sum(1).mean()

    return reg(p1, z2) + reg(p2, z1)


def test_byol_loss_equals_reference() -> None:
    g = torch.Generator().manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(4))
    loss = BYOLLoss()(p1, p2, z1, z2)
    torch.testing.assert_close(loss, reference_byol(p1, p2, z1, z2))
    cos = F.cosine_similarity
    torch.testing.assert_close(loss, (2 - 2 * cos(p1, z2)).mean() + (2 - 2 * cos(p2, z1)).mean())
    p, z = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    BYOLLoss()(p, p, z, z).backward()
    assert p.grad is not None and z.grad is None  # the target is a stop-gradient


# --- shared parts ------------------------------------------------------------------------------


def test_mlp_head_shapes_and_layers() -> None:
    proj = MLPHead(24, 32, 16, n_layers=3, last_bn=True)  # MoCo v3's ViT projector
    assert proj(torch.randn(5, 24)).shape == (5, 16)
    linears = [m for m in proj.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in proj.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 3 and len(norms) == 3
    assert all(m.bias is None for m in linears)  # every linear is followed by a BatchNorm
    assert not norms[-1].affine and all(isinstance(m, SyncBatchNorm1d) for m in norms)
    plain = MLPHead(24, 32, 16, use_bn=False, sync_bn=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert [m.bias is not None for m in plain.modules() if isinstance(m, nn.Linear)] == [True] * 2
    with pytest.raises(ValueError, match="at least 1"):
        MLPHead(4, 4, 4, n_layers=0)


def test_sync_batchnorm_normalises_over_the_global_batch(monkeypatch) -> None:
    """One process: BatchNorm's formula. As rank 0 of 2 (the other rank's sums stand in for
    the all-reduce): the statistics of the concatenated batch, as ``nn.BatchNorm1d`` has them."""
    torch.manual_seed(0)
    x, other = torch.randn(8, 6) * 3 + 1, torch.randn(5, 6) * 0.5 - 2
    ours = SyncBatchNorm1d(6)
    mean, var = x.mean(0), x.var(0, unbiased=False)
    torch.testing.assert_close(ours(x), (x - mean) / torch.sqrt(var + 1e-5))
    torch.testing.assert_close(ours.running_mean, 0.1 * mean)  # momentum 0.1, unbiased variance
    torch.testing.assert_close(ours.running_var, 0.9 + 0.1 * x.var(0))
    assert gather_with_grad(x) is x

    other_sums = torch.cat([other.sum(0), (other**2).sum(0), torch.tensor([5.0])])
    monkeypatch.setattr(distributed, "world_and_rank", lambda: (2, 0))
    monkeypatch.setattr(distributed, "all_reduce_with_grad", lambda stats: stats + other_sums)
    synced, ref = SyncBatchNorm1d(6), nn.BatchNorm1d(6)
    with torch.no_grad():
        for bn in (synced, ref):
            bn.weight.copy_(torch.linspace(0.5, 2, 6))
            bn.bias.copy_(torch.linspace(-1, 1, 6))
    torch.testing.assert_close(synced(x), ref(torch.cat([x, other]))[:8])
    torch.testing.assert_close(synced.running_mean, ref.running_mean)
    torch.testing.assert_close(synced.running_var, ref.running_var)
    assert not torch.allclose(synced.running_var, ours.running_var)  # not this rank's alone


@pytest.mark.parametrize("cls", [MoCoV3, BYOL])
def test_momentum_encoder_starts_equal_and_is_not_optimised(cls: type) -> None:
    module = cls(create_backbone("test_vit"), 8, OptimSettings(), hidden_dim=16, dim=8)
    s, t = module.backbone.state_dict(), module.teacher_backbone.state_dict()
    assert all(torch.equal(s[k], t[k]) for k in s)
    optimised = {id(p) for g in module.build_optimizer().param_groups for p in g["params"]}
    teacher = [*module.teacher_backbone.parameters(), *module.teacher_projector.parameters()]
    assert not any(id(p) in optimised for p in teacher)
    assert module.export_backbone() is module.teacher_backbone
    with pytest.raises(ValueError, match="momentum"):
        cls(create_backbone("test_vit"), 8, None, momentum=0.999, momentum_end=0.99)


def test_simclr_uses_both_views_and_no_locals() -> None:
    module = SimCLR(create_backbone("test_vit"), 4, None, proj_hidden_dim=16, proj_dim=8)
    with pytest.raises(ValueError, match="2 global views"):
        module.training_step(({"global": [torch.randn(4, 3, 32, 32)]}, None), 0)


# --- through the real CLI, from the real recipes -------------------------------------------------


def tiny_overrides(tmp_path: Path, data: Path, backbone: str = "test_vit") -> list[str]:
    """Overrides that shrink a real recipe to tiny generated data and a tiny timm backbone."""
    weights = tmp_path / f"{backbone}.safetensors"
    save_file(timm.create_model(backbone, num_classes=0).state_dict(), str(weights))
    return [
        f"backbone.name={backbone}",
        f"backbone.weights={weights}",
        f"data.train={data}",
        "data.train_split=train",
        "data.image_size=32",
        "data.batch_size=8",
        "data.num_workers=0",
        f"eval.data={data}",
        "eval.test_split=val",
        "eval.every_n_epochs=0",
        "eval.batch_size=32",
        "eval.num_workers=0",
        "optim.freeze_backbone_epochs=0",
        "optim.warmup_epochs=0",
        "trainer.max_epochs=1",
        "trainer.progress_bar=false",
        "trainer.log_every_n_steps=1",
    ]


def logged_losses(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss_step")]


def train_export_check(
    tmp_path: Path,
    recipe: str,
    overrides: list[str],
    backbone: str,
    loss_range: tuple[float, float],
) -> Path:
    """Train, check every logged loss lies in ``loss_range`` (the range its formula allows on a
    batch of 8, from the similarities' bounds) and the weights moved, export, load in stock
    timm. -> export dir."""
    run, export = tmp_path / "run", tmp_path / "export"
    assert main(["train", str(ROOT / "recipes" / recipe), f"run_dir={run}", *overrides]) == 0
    losses = logged_losses(run)
    low, high = loss_range
    assert len(losses) >= 3 and all(low <= x <= high for x in losses), losses
    assert main(["export", str(run), "--out", str(export)]) == 0
    stock = timm.create_model(f"local-dir:{export}", pretrained=True, num_classes=0).eval()
    ckpt = create_backbone(backbone, weights=str(run / "checkpoints" / "last.ckpt")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stock(x), ckpt(x))
    start = load_file(str(tmp_path / f"{backbone}.safetensors"))
    exported = load_file(str(export / "model.safetensors"))
    assert set(exported) == set(start)  # a plain backbone: no heads, no teacher
    assert any(
        not torch.equal(exported[k], start[k]) for k in start if start[k].is_floating_point()
    )
    return export


# Loss ranges for batches of B = 8 (cosine similarities in [-1, 1]): NT-Xent (tau 0.2, 2B views)
# in [0, log(2B - 1) + 2 / tau]; MoCo v3 (tau 1.0), 2 tau CE twice, each CE in
# [log(1 + (B - 1) e^(-2 / tau)), log B + 2 / tau]; BYOL, two squared distances of unit vectors.
RANGES = {
    "simclr": (0.0, math.log(15) + 2 / 0.2),
    "moco_v3": (4 * math.log(1 + 7 * math.exp(-2)), 4 * math.log(8) + 8),
    "byol": (0.0, 8.0),
}


@pytest.mark.parametrize(
    ("recipe", "method"),
    [
        ("simclr", ["method.proj_hidden_dim=32", "method.proj_dim=16"]),
        ("moco_v3", ["method.hidden_dim=32", "method.dim=16", "method.momentum=0.9"]),
        ("byol", ["method.hidden_dim=32", "method.dim=16", "method.momentum=0.9"]),
    ],
)
def test_method_trains_from_recipe_and_exports(tmp_path, tiny_dataset, recipe, method) -> None:
    overrides = tiny_overrides(tmp_path, tiny_dataset) + method
    train_export_check(tmp_path, f"{recipe}.yaml", overrides, "test_vit", RANGES[recipe])
