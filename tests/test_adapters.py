"""Adapters: the LoRA layer against its formula, injection and merge on tiny timm ViTs and CNNs,
freezing policies, DINO with adapters (frozen tensors unchanged, EMA teacher), and end to end:
small checkpoints, resume, export merged and loadable by stock timm."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from acclimate.adapters import (
    ADAPTER_ATTR,
    AdapterError,
    AdapterSettings,
    LoRALayer,
    apply_adapter,
    block_names,
    count_parameters,
    has_lora,
    inject_lora,
    last_blocks,
    matches,
    merge_lora,
)
from acclimate.backbones import create_backbone
from acclimate.cli import main
from acclimate.config import ConfigError, load_recipe
from acclimate.export.load import load_adapted_backbone
from acclimate.run_info import read_run_info
from acclimate.ssl import DINO, METHODS, OptimSettings, SSLModule

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")

VIT_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
RESNET_TARGETS = r"layer\d\.\d\.conv\d"  # regex: every 3x3 conv of the residual blocks


def _randomize_lora(model: nn.Module, seed: int = 0) -> None:
    """LoRA starts with B = 0 (a no-op); give B values so that merging has something to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALayer):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


# --- the layer against the formula --------------------------------------------------------------


def test_lora_linear_equals_formula() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = LoRALayer(copy.deepcopy(base), rank=3, alpha=6.0)
    x = torch.randn(5, 4, 12)
    torch.testing.assert_close(layer(x), base(x))  # B = 0: exactly the base layer at first
    _randomize_lora(layer)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    expected = x @ base.weight.T + base.bias + (6.0 / 3) * (x @ a.T @ b.T)  # Hu et al. eq. (3)
    torch.testing.assert_close(layer(x), expected)
    merged = layer.merged()
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), expected, atol=1e-6, rtol=1e-5)


def test_lora_conv_equals_formula() -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    layer = LoRALayer(copy.deepcopy(base), rank=2, alpha=2.0)
    _randomize_lora(layer)
    x = torch.randn(2, 4, 9, 9)
    delta = torch.einsum("or,rikl->oikl", layer.lora_B.weight[:, :, 0, 0], layer.lora_A.weight)
    expected = F.conv2d(x, base.weight + delta, base.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(layer.merged()(x), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(TypeError, match="groups=1"):
        LoRALayer(nn.Conv2d(4, 4, 3, groups=4), rank=2, alpha=2.0)


# --- injection and merge on timm models ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "targets", "n_layers"),
    [("test_vit", VIT_TARGETS, 6 * 4), ("test_resnet", RESNET_TARGETS, None)],
)
def test_inject_then_merge_gives_plain_timm_model(name: str, targets, n_layers: int | None) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=0).eval()
    plain_keys = list(model.state_dict())
    if n_layers is None:
        n_layers = sum(
            isinstance(m, nn.Conv2d) and matches(n, targets) for n, m in model.named_modules()
        )
    for bn in model.modules():  # timm zero-inits each residual block's last BN: LoRA unseen
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.ones_(bn.weight)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    wrapped = inject_lora(model, targets, rank=4, alpha=8.0)
    assert len(wrapped) == n_layers and has_lora(model)
    assert any(".base_layer." in k for k in model.state_dict())
    with torch.no_grad():  # B = 0 at first: the adapted model computes what the model did
        torch.testing.assert_close(model(x), before)
    _randomize_lora(model)
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(copy.deepcopy(model))(x)
    assert not torch.allclose(adapted, before)
    assert (adapted - merged).abs().max() <= 1e-5
    plain = merge_lora(model)
    assert list(plain.state_dict()) == plain_keys and not has_lora(plain)
    fresh = timm.create_model(name, num_classes=0).eval()
    fresh.load_state_dict(plain.state_dict())  # strict: the very layout of stock timm
    with torch.no_grad():
        assert (fresh(x) - adapted).abs().max() <= 1e-5


def test_target_modules_rules_and_errors() -> None:
    model = timm.create_model("test_vit", num_classes=0)
    assert len(inject_lora(copy.deepcopy(model), ["qkv"], 2, 2.0)) == 6  # suffix after a dot
    assert len(inject_lora(copy.deepcopy(model), r"blocks\.[05]\.attn\.qkv", 2, 2.0)) == 2
    assert len(inject_lora(copy.deepcopy(model), ["qkv"], 2, 2.0, exclude=["blocks.5"])) == 5
    with pytest.raises(AdapterError, match="matched no layer.*qkv"):
        inject_lora(copy.deepcopy(model), ["query"], 2, 2.0)
    with pytest.raises(AdapterError, match="cannot wrap.*LayerNorm"):
        inject_lora(copy.deepcopy(model), ["norm1"], 2, 2.0)


# --- freezing policies ----------------------------------------------------------------------------


def test_block_rules_for_vit_resnet_efficientnet() -> None:
    vit = timm.create_model("test_vit", num_classes=0)
    assert block_names(vit) == [f"blocks.{i}" for i in range(6)]
    assert last_blocks(vit, 1) == ["blocks.5", "norm", "fc_norm", "head_drop", "head"]
    resnet = timm.create_model("test_resnet", num_classes=0)
    assert last_blocks(resnet, 2)[:2] == ["layer3", "layer4"]
    effnet = timm.create_model("test_efficientnet", num_classes=0)
    assert last_blocks(effnet, 1)[:3] == ["blocks.4", "conv_head", "bn2"]  # last stage + head
    with pytest.raises(AdapterError, match="has 6 blocks"):
        last_blocks(vit, 7)
    with pytest.raises(AdapterError, match="cannot tell the blocks of Sequential"):
        last_blocks(nn.Sequential(nn.Linear(2, 2)), 1)


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_policies_and_combinations() -> None:
    def adapted(**kw) -> nn.Module:
        m = timm.create_model("test_vit", num_classes=0)
        apply_adapter(m, AdapterSettings(**kw))
        return m

    full = adapted()
    assert _trainable(full) == {n for n, _ in full.named_parameters()}  # defaults: train it all
    lora = adapted(lora_rank=4, target_modules=["attn.qkv"])
    assert _trainable(lora) and all(".lora_" in n for n in _trainable(lora))
    norms = adapted(train_norms=True)
    assert _trainable(norms) == {
        n for n, _ in norms.named_parameters() if "norm" in ("." + n).rsplit(".", 2)[-2]
    }
    biases = adapted(train_biases=True)
    assert _trainable(biases) == {n for n, _ in biases.named_parameters() if n.endswith("bias")}
    embed = adapted(train_patch_embed=True)
    assert _trainable(embed) == {
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "pos_embed",
        "cls_token",
    }
    explora = adapted(
        lora_rank=4, target_modules=["attn.qkv"], unfreeze_last_blocks=1, train_norms=True
    )
    t = _trainable(explora)
    assert {n for n, _ in explora.named_parameters() if n.startswith("blocks.5.")} <= t
    assert not any(n.startswith("blocks.5.") and "lora" in n for n in t)  # no LoRA in it
    assert {"blocks.0.norm1.weight", "norm.weight"} <= t
    assert "blocks.0.attn.qkv.base_layer.weight" not in t
    assert "blocks.0.mlp.fc1.weight" not in t
    trainable, total = count_parameters(explora)
    assert trainable == sum(p.numel() for n, p in explora.named_parameters() if n in t)
    assert 0 < trainable < total
    frozen = getattr(explora, ADAPTER_ATTR)["frozen"]
    assert set(frozen) == {n for n, _ in explora.named_parameters()} - t
    resnet = timm.create_model("test_resnet", num_classes=0)
    apply_adapter(resnet, AdapterSettings(unfreeze_last_blocks=1, train_patch_embed=True))
    assert {"conv1.0.weight", "layer4.0.conv1.weight"} <= _trainable(resnet)  # stem conv
    assert "layer3.0.conv1.weight" not in _trainable(resnet)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="lora_rank"):
        AdapterSettings(lora_rank=-1)
    with pytest.raises(ValueError, match="lora_dropout"):
        AdapterSettings(lora_rank=4, lora_dropout=1.0)
    assert AdapterSettings(lora_rank=8).alpha == 8.0 and not AdapterSettings().active


def test_recipe_adapter_section(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "backbone: {name: test_vit}\ndata: {train: x}\n"
        "adapter: {lora_rank: 8, target_modules: [attn.qkv], unfreeze_last_blocks: 1}\n"
    )
    r = load_recipe(recipe)
    assert r.data["adapter"]["lora_rank"] == 8 and r.data["adapter"]["save_base"] is True
    with pytest.raises(
        ConfigError, match="adapter.lora_rnk: unknown key; did you mean 'lora_rank'"
    ):
        load_recipe(recipe, ["adapter.lora_rnk=4"])
    with pytest.raises(ConfigError, match="adapter.train_norms: expected bool"):
        load_recipe(recipe, ["adapter.train_norms=maybe"])


# --- DINO with adapters ---------------------------------------------------------------------------

BATCH = 4


class Views(Dataset):
    def __init__(self, n: int = 4 * BATCH) -> None:
        g = torch.Generator().manual_seed(0)
        self.globals = torch.randn(n, 2, 3, 32, 32, generator=g)
        self.locals = torch.randn(n, 2, 3, 16, 16, generator=g)

    def __len__(self) -> int:
        return len(self.globals)

    def __getitem__(self, i: int) -> tuple[dict[str, list[Tensor]], int]:
        return {"global": list(self.globals[i]), "local": list(self.locals[i])}, 0


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _dino(name: str, adapter: AdapterSettings, optim: OptimSettings, m: float = 0.9) -> DINO:
    torch.manual_seed(0)
    backbone = create_backbone(name)
    for bn in backbone.modules():  # timm zero-inits each residual block's last BN: no gradient
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.ones_(bn.weight)
    apply_adapter(backbone, adapter)
    head = dict(out_dim=32, hidden_dim=32, bottleneck_dim=16)
    return DINO(
        backbone, BATCH, optim, momentum_teacher=m, momentum_teacher_end=m, **head,
        freeze_last_layer_epochs=0,
    )  # fmt: skip


def _fit(module: SSLModule, steps: int) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(Views(), batch_size=BATCH))


@pytest.mark.parametrize(
    ("name", "adapter"),
    [
        ("test_vit", AdapterSettings(lora_rank=4, target_modules=VIT_TARGETS, train_norms=True)),
        (
            "test_resnet",
            AdapterSettings(lora_rank=2, target_modules=RESNET_TARGETS, unfreeze_last_blocks=1),
        ),
    ],
)
def test_dino_trains_only_the_adapter_and_teacher_follows(name: str, adapter) -> None:
    optim = OptimSettings(lr=0.05, warmup_epochs=0, freeze_backbone_epochs=0)
    module = _dino(name, adapter, optim)
    frozen = set(getattr(module.backbone, ADAPTER_ATTR)["frozen"])
    start = _state(module.backbone)
    opt = module.build_optimizer()
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not any(id(p) in in_opt for n, p in module.backbone.named_parameters() if n in frozen)

    _fit(module, steps=1)

    student, teacher = _state(module.backbone), _state(module.teacher_backbone)
    params = dict(module.backbone.named_parameters())
    for k in frozen:  # frozen base weights: bit-identical, in the student and its EMA teacher
        assert torch.equal(student[k], start[k]), k
        assert torch.equal(teacher[k], start[k]), k
    trained = [k for k, p in params.items() if p.requires_grad]
    changed = [k for k in trained if not torch.equal(student[k], start[k])]
    assert any("lora_B" in k for k in changed)
    for k in params:  # the teacher follows by EMA over the same state-dict names
        expected = 0.9 * start[k] + 0.1 * student[k]
        torch.testing.assert_close(teacher[k], expected, msg=k)
    x = torch.randn(2, 3, 32, 32)
    t = module.teacher_backbone.eval()
    with torch.no_grad():
        assert (merge_lora(copy.deepcopy(t))(x) - t(x)).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("method", "targets", "kwargs"),
    [
        (
            "dinov2",
            ["attn.qkv"],
            dict(out_dim=32, hidden_dim=32, bottleneck_dim=16, mask_prob=1.0, momentum_teacher=0.9),
        ),
        ("mae", ["attn.qkv", "patch_embed.proj"], dict(decoder_dim=16, decoder_depth=1)),
        ("moco", ["attn.qkv"], dict(hidden_dim=32, dim=16, momentum=0.9)),
    ],
)
def test_one_step_with_lora_and_last_block(method: str, targets: list[str], kwargs) -> None:
    """LoRA (on the patch embedding too, for MAE) plus the last block: one training step moves
    the adapter and leaves the frozen base weights bit-identical, in the student and teacher."""
    torch.manual_seed(0)
    backbone = create_backbone("test_vit")
    apply_adapter(
        backbone, AdapterSettings(lora_rank=4, target_modules=targets, unfreeze_last_blocks=1)
    )
    frozen = set(getattr(backbone, ADAPTER_ATTR)["frozen"])
    start = _state(backbone)
    optim = OptimSettings(lr=0.05, warmup_epochs=0, freeze_backbone_epochs=0)
    module = METHODS[method](backbone, BATCH, optim, **kwargs)
    _fit(module, steps=1)
    after = _state(module.backbone)
    nets = [after]
    if hasattr(module, "teacher_backbone"):
        nets.append(_state(module.teacher_backbone))
    for net in nets:
        for k in frozen:
            assert torch.equal(net[k], start[k]), k
    for k in ("blocks.0.attn.qkv.lora_B.weight", "blocks.5.mlp.fc1.weight"):
        assert not torch.equal(after[k], start[k]), k


def test_frozen_warmup_composes_with_adapters() -> None:
    """freeze_backbone_epochs: the LoRA tensors, too, wait for the end of the warm-up."""
    adapter = AdapterSettings(lora_rank=4, target_modules=["attn.qkv"])
    optim = OptimSettings(warmup_epochs=0, freeze_backbone_epochs=1.0)
    module = _dino("test_vit", adapter, optim)
    start = _state(module.backbone)
    _fit(module, steps=2)
    after = _state(module.backbone)
    assert all(torch.equal(after[k], start[k]) for k in start)


# --- end to end: small checkpoints, resume, merged export -----------------------------------------

RECIPE = """
name: tiny
backbone: {{name: test_vit, weights: {weights}}}
adapter:
  lora_rank: 4
  target_modules: [attn.qkv, attn.proj]
  unfreeze_last_blocks: 1
  train_norms: true
  save_base: {save_base}
data: {{train: {data}, channels: 3, image_size: 32, batch_size: 8, num_workers: 0}}
augment: {{n_local: 2, local_size: 16}}
method: {{name: dino, out_dim: 64, hidden_dim: 32, bottleneck_dim: 16}}
optim: {{freeze_backbone_epochs: 0, warmup_epochs: 0, lr: 0.05}}
eval: {{before_after: false, every_n_epochs: 0}}
trainer: {{max_epochs: 1, limit_train_batches: 2, progress_bar: false, log_every_n_steps: 1}}
"""


def _run(tmp_path: Path, data: Path, save_base: bool, *overrides: str) -> Path:
    weights = tmp_path / "base.safetensors"
    if not weights.exists():
        torch.manual_seed(0)
        save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(weights))
    recipe = tmp_path / f"recipe_{save_base}.yaml"
    text = RECIPE.format(weights=weights, save_base=str(save_base).lower(), data=data)
    recipe.write_text(text)
    run = tmp_path / f"run_{save_base}"
    assert main(["train", str(recipe), f"run_dir={run}", *overrides]) == 0
    return run


def test_small_checkpoint_resume_and_merged_export(
    tmp_path: Path, tiny_dataset: Path, caplog: pytest.LogCaptureFixture, capsys
) -> None:
    caplog.set_level(logging.INFO, logger="acclimate")
    full = _run(tmp_path, tiny_dataset, True)
    small = _run(tmp_path, tiny_dataset, False)
    size = {r: (r / "checkpoints" / "last.ckpt").stat().st_size for r in (full, small)}
    assert size[small] < 0.5 * size[full]
    ckpt = torch.load(small / "checkpoints" / "last.ckpt", weights_only=True)
    sd = ckpt["state_dict"]
    assert "backbone.blocks.0.attn.qkv.base_layer.weight" not in sd  # frozen: left out
    assert "teacher_backbone.blocks.0.attn.qkv.base_layer.weight" not in sd
    assert "backbone.blocks.0.attn.qkv.lora_B.weight" in sd
    assert "teacher_backbone.blocks.5.mlp.fc1.weight" in sd  # the unfrozen last block
    info = ckpt["acclimate_adapter"]
    assert Path(info["base"]["weights"]).is_absolute() and info["dropped"]
    assert "trainable backbone parameters" in caplog.text  # run log; TensorBoard too:
    hparams = (small / "tensorboard" / "hparams.yaml").read_text()
    assert "params/backbone_trainable" in hparams and "params/backbone_total" in hparams

    # resume: continues from the small checkpoint, the frozen tensors re-filled from the base
    assert main(["train", "--resume", str(small), "trainer.max_epochs=2"]) == 0
    resumed = torch.load(small / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * ckpt["global_step"]
    lora = "backbone.blocks.0.attn.qkv.lora_B.weight"
    assert not torch.equal(resumed["state_dict"][lora], sd[lora])

    # export: LoRA merged, stock timm loads it, features equal those of the adapted teacher
    for run in (full, small):
        out = run / "export"
        assert main(["export", str(run), "--out", str(out)]) == 0
        tensors = load_file(str(out / "model.safetensors"))
        assert not any("lora" in k or "base_layer" in k for k in tensors)
        stock = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
        adapted = _adapted_teacher(run, tmp_path / "base.safetensors")
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            assert (stock(x) - adapted(x)).abs().max() <= 1e-5
        merged = load_adapted_backbone(run / "checkpoints" / "last.ckpt")
        assert not has_lora(merged)

    # a small checkpoint refuses other base weights than its own, in one line
    torch.manual_seed(1)
    save_file(
        timm.create_model("test_vit", num_classes=0).state_dict(),
        str(tmp_path / "base.safetensors"),
    )
    assert main(["train", "--resume", str(small), "trainer.max_epochs=3"]) == 2
    assert main(["export", str(small), "--out", str(tmp_path / "other")]) == 2
    assert "not the ones it was trained from" in capsys.readouterr().err


def test_full_checkpoint_resume_with_adapter(tmp_path: Path, tiny_dataset: Path) -> None:
    """save_base: true: the checkpoint holds every tensor and resumes as it is."""
    full = _run(tmp_path, tiny_dataset, True)
    ckpt = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    sd = ckpt["state_dict"]
    base = "backbone.blocks.0.attn.qkv.base_layer.weight"
    assert base in sd and "teacher_" + base in sd
    assert main(["train", "--resume", str(full), "trainer.max_epochs=2"]) == 0
    resumed = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * ckpt["global_step"]
    lora = "backbone.blocks.0.attn.qkv.lora_B.weight"
    assert not torch.equal(resumed["state_dict"][lora], sd[lora])
    for k in (base, "teacher_" + base):  # frozen: bit-identical after the resumed epoch
        assert torch.equal(resumed["state_dict"][k], sd[k]), k


def _adapted_teacher(run: Path, base: Path) -> nn.Module:
    """The unmerged teacher of a run: base weights + adapter + the checkpoint's tensors."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    model = create_backbone("test_vit", weights=str(base)).eval()
    apply_adapter(model, read_run_info(run / "checkpoints" / "last.ckpt").adapter)
    prefix = "teacher_backbone."
    own = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(own, strict=False)
    assert not unexpected and all(".base_layer." in k or "blocks.5" not in k for k in missing)
    assert has_lora(model)
    return model


def test_save_base_false_needs_base_weights(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    _run(tmp_path, tiny_dataset, True)  # writes the base file; then train without it
    recipe = tmp_path / "recipe_True.yaml"
    args = ["backbone.weights=null", "adapter.save_base=false", f"run_dir={tmp_path / 'r2'}"]
    assert main(["train", str(recipe), *args]) == 2
    assert "needs base weights" in capsys.readouterr().err
    ckpt = torch.load(tmp_path / "run_True/checkpoints/last.ckpt", weights_only=True)
    meta = json.loads(json.dumps(ckpt["acclimate"]))  # run info: plain JSON types
    assert meta["adapter"]["lora_rank"] == 4
    assert ckpt["acclimate_recipe"]["adapter"]["lora_rank"] == 4  # the recipe, as a record


def test_start_blend_of_an_adapted_run_blends_the_merged_weights(
    tmp_path: Path, tiny_dataset: Path
) -> None:
    """LoRA merged first, then blended with the base weights the run started from (rebuilt
    from the checkpoint's base-weights reference: the small checkpoint does not hold them)."""
    small = _run(tmp_path, tiny_dataset, False, "export.start_blend=0.5")
    base = load_file(str(tmp_path / "base.safetensors"))
    outs = {}
    for keep in ("1", "0", "0.5"):
        out = tmp_path / f"export_{keep}"
        assert main(["export", str(small), "--out", str(out), "--start-blend", keep]) == 0
        outs[keep] = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in outs["0.5"])
    moved = [k for k, v in base.items() if not torch.equal(v, outs["1"][k])]
    assert moved  # the LoRA-merged layers and the unfrozen last block
    for k, v in base.items():
        torch.testing.assert_close(outs["0"][k], v)
        torch.testing.assert_close(outs["0.5"][k], (v + outs["1"][k]) / 2)
    default = tmp_path / "export_recipe"
    assert main(["export", str(small), "--out", str(default)]) == 0  # the run's own 0.5
    for k, v in load_file(str(default / "model.safetensors")).items():
        torch.testing.assert_close(v, outs["0.5"][k])
