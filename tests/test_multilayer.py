"""Multi-layer features ``last{k}``: DINOv2's linear-evaluation input for ViTs (CLS of the last k
blocks after the final norm + the mean patch token), the average pool of the last k stages for
CNNs; one kind from the recipe through training, export, acclimate.load, probes, ONNX, evaluate
and embed; bad names are one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from test_cli import write_recipe
from test_export import _backbone
from torch import Tensor, nn

import acclimate
from acclimate.cli import main
from acclimate.config import ConfigError, load_recipe
from acclimate.errors import AcclimateError
from acclimate.eval.features import check_kind, features_of
from acclimate.eval.multilayer import last_k_widths, pooled_and_last_k, timm_code
from acclimate.export import export_backbone

# --- the features against hand computations ----------------------------------------------------


def vit_reference(vit: nn.Module, x: Tensor, k: int) -> Tensor:
    """DINOv2's ``create_linear_input(get_intermediate_layers(x, k, return_class_token=True),
    avgpool=True)``, walked block by block: every block's output through the final norm, the
    CLS tokens of the last k, then the mean patch token of the last."""
    t = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    normed = []
    for block in vit.blocks:
        t = block(t)
        normed.append(vit.norm(t))
    last = normed[-k:]
    patch_mean = last[-1][:, vit.num_prefix_tokens :].mean(1)
    return torch.cat([n[:, 0] for n in last] + [patch_mean], dim=1)


def resnet_reference(m: nn.Module, x: Tensor, k: int) -> Tensor:
    """Global average pool of each of the last k of (stem, layer1, ..., layer4), concatenated."""
    maps = [m.act1(m.bn1(m.conv1(x)))]
    y = m.maxpool(maps[0])
    for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
        y = layer(y)
        maps.append(y)
    return torch.cat([f.mean((2, 3)) for f in maps[-k:]], dim=1)


@pytest.mark.parametrize("k", [1, 4, 6])
def test_vit_last_k_is_dinov2_linear_input(k: int) -> None:
    vit = _backbone("test_vit", 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = features_of(vit, x, f"last{k}")
        expected = vit_reference(vit, x, k)
        tokens = vit.forward_features(x)  # the last block, normed: its CLS and patch mean
    assert got.shape == (2, (k + 1) * vit.embed_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    d = vit.embed_dim
    torch.testing.assert_close(got[:, (k - 1) * d : k * d], tokens[:, 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[:, k * d :], tokens[:, 1:].mean(1), rtol=0, atol=1e-5)


def test_vit_without_class_token_pools_each_block() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", num_classes=0, class_token=False, global_pool="avg")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = features_of(vit.eval(), x, "last3")
        maps = vit.forward_intermediates(x, indices=3, norm=True, intermediates_only=True)
    assert got.shape == (2, 3 * vit.embed_dim)
    torch.testing.assert_close(got, torch.cat([m.mean((2, 3)) for m in maps], 1))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_cnn_last_k_pools_the_last_stages(k: int) -> None:
    resnet = _backbone("test_resnet", 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = features_of(resnet, x, f"last{k}")
        expected = resnet_reference(resnet, x, k)
    widths = [f["num_chs"] for f in resnet.feature_info][-k:]
    assert got.shape == (2, sum(widths)) and expected.shape == got.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if k == 1:  # a ResNet's last stage, average-pooled, is its own pooled feature
        torch.testing.assert_close(got, features_of(resnet, x, "pooled"), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["test_vit", "test_resnet"])
def test_pooled_and_last_k_in_one_forward(name: str) -> None:
    """What distillation's ``teacher_layers`` regresses: the pooled embedding and the parts of
    last{k}, from one forward, equal to the two computed apart."""
    model = _backbone(name, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled, parts = pooled_and_last_k(model, x, 2)
        alone, whole = model(x), features_of(model, x, "last2")
    torch.testing.assert_close(pooled, alone, rtol=0, atol=1e-5)
    assert [p.shape[1] for p in parts] == last_k_widths(model, 2)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=0, atol=1e-5)


def test_kind_the_backbone_cannot_give_is_one_line() -> None:
    resnet = _backbone("test_resnet", 3)
    with pytest.raises(AcclimateError, match="has 5 stages; choose last1 to last5"):
        check_kind(resnet, "last6")
    with pytest.raises(AcclimateError, match="CLS token"):
        check_kind(resnet, "cls")
    with pytest.raises(AcclimateError, match="'multi4': expected pooled, cls, patch or last"):
        features_of(resnet, torch.randn(1, 3, 32, 32), "multi4")


# --- names in recipes and on the command line ---------------------------------------------------


@pytest.mark.parametrize("bad", ["multi4", "last0", "last", "patch", "Last4", "last4x"])
def test_bad_kind_in_a_recipe_names_the_key_and_the_choices(tmp_path, tiny_dataset, bad) -> None:
    recipe = write_recipe(tmp_path, tiny_dataset)
    with pytest.raises(ConfigError) as err:
        load_recipe(recipe, [f"eval.features={bad}"])
    assert "the command line: eval.features: must be pooled, cls or last{k} with k >= 1" in str(
        err.value
    )
    assert repr(bad) in str(err.value)


def test_good_kinds_in_a_recipe(tmp_path, tiny_dataset) -> None:
    recipe = write_recipe(tmp_path, tiny_dataset)
    assert load_recipe(recipe).data["eval"]["features"] == "pooled"
    for kind in ("last1", "last4", "cls"):
        assert load_recipe(recipe, [f"eval.features={kind}"]).data["eval"]["features"] == kind
    with pytest.raises(ConfigError, match="eval.features: expected str"):
        load_recipe(recipe, ["eval.features=4"])


def test_kind_too_deep_for_the_backbone_stops_training_first(tmp_path, tiny_dataset) -> None:
    from acclimate.training import train

    recipe = load_recipe(write_recipe(tmp_path, tiny_dataset), ["eval.features=last9"])
    with pytest.raises(ConfigError, match=r"eval\.features: last9: the backbone has 5 stages"):
        train(recipe, tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert not (tmp_path / "run" / "metrics.json").exists()  # not even the before-evaluation


def test_bad_kind_on_the_command_line(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["probe", str(tmp_path), "--data", str(tmp_path), "--features", "multi4"])
    assert exit_.value.code == 2
    assert "feature kind 'multi4': expected pooled, cls or last{k}" in capsys.readouterr().err


_PRE = {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32}  # preprocessing of the exports


def test_altered_kind_in_an_export_is_one_line(tmp_path) -> None:
    from acclimate.export.meta import ExportFileError

    out = tmp_path / "export"
    export_backbone(_backbone("test_resnet", 3), out, **_PRE)
    meta = json.loads((out / "acclimate.json").read_text())
    assert (meta["features"], meta["feature_dim"]) == ("pooled", 96)
    assert acclimate.load(out).feature_kind == "pooled"
    (out / "acclimate.json").write_text(json.dumps({**meta, "features": "every"}))
    with pytest.raises(ExportFileError, match="acclimate.json: features: feature kind 'every'"):
        acclimate.load(out)
    del meta["features"]  # an export made before feature kinds: pooled
    (out / "acclimate.json").write_text(json.dumps(meta))
    assert acclimate.load(out).feature_kind == "pooled"
    with pytest.raises(AcclimateError, match="choose last1 to last5"):
        export_backbone(_backbone("test_resnet", 3), tmp_path / "deep", **_PRE, features="last6")


# --- export -> acclimate.load -> probe -> ONNX ---------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "dim"),
    [("test_vit", "last2", 3 * 64), ("test_resnet", "last3", 48 + 192 + 96)],
)
def test_export_load_probe_onnx_agree(tmp_path, tiny_dataset, name, kind, dim) -> None:
    model = _backbone(name, 3)
    out = tmp_path / "export"
    export_backbone(model, out, **_PRE, features=kind)
    meta = json.loads((out / "acclimate.json").read_text())
    assert (meta["features"], meta["feature_dim"]) == (kind, dim)

    # stock timm, the model card's own lines, acclimate.load: the same vectors
    stock = timm.create_model(f"local-dir:{out}", pretrained=True, num_classes=0).eval()
    ex = acclimate.load(out)
    assert ex.feature_kind == kind
    images = sorted((tiny_dataset / "val" / "class_1").glob("*.png"))[:3]
    x = ex.preprocess(images)
    scope = {"model": stock, "x": x, "torch": torch}
    with torch.no_grad():
        exec(timm_code(kind, meta["class_token"]), scope)
    feats = ex.features(images)
    assert feats.shape == (3, dim)
    torch.testing.assert_close(feats, scope["features"], rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert f"use `{kind}` features by default ({dim} values per image)" in card
    assert "forward_intermediates" in card

    # probes on the export's kind (default) and on pooled: each predicts from its own kind
    assert main(["probe", str(out), "--data", str(tiny_dataset), "--name", "multi"]) == 0
    flags = ["--name", "plain", "--features", "pooled"]
    assert main(["probe", str(out), "--data", str(tiny_dataset), *flags]) == 0
    ex = acclimate.load(out)
    assert ex.probe_info["multi"]["feature"] == kind
    assert ex.probe_info["plain"]["feature"] == "pooled"
    assert ex.probes["multi"].weight.shape == (3, dim)
    _, probs = ex.predict(images, "multi")
    torch.testing.assert_close(probs, ex.probes["multi"].logits(feats).softmax(1))
    _, pooled_probs = ex.predict(images, "plain")
    assert pooled_probs.shape == (3, 3)
    assert f"| multi | 3 | `{kind}` |" in (out / "README.md").read_text()

    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from acclimate.export.onnx import add_onnx, onnx_features

    info = add_onnx(out)
    assert info["output_shape"] == ["batch", dim] and info["feature"] == kind
    assert info["max_abs_diff"] <= 1e-4
    assert (onnx_features(out / "model.onnx", x) - feats).abs().max() <= 1e-4
    assert f"the `{kind}` features" in (out / "README.md").read_text()


# --- one kind through training, evaluate and embed ----------------------------------------------


def test_training_evaluate_and_embed_use_the_recipe_kind(
    tmp_path, tiny_dataset, monkeypatch, capsys
) -> None:
    import acclimate.callbacks
    import acclimate.eval.protocol

    seen: dict[str, list[str]] = {"monitor": [], "before/after": []}
    for module, role in (
        (acclimate.callbacks, "monitor"),
        (acclimate.eval.protocol, "before/after"),  # evaluate_backbone's split_features
    ):
        real = module.split_features

        def spy(model, sources, transform, protocol, *args, _real=real, _role=role, **kwargs):
            seen[_role].append(protocol.features)
            return _real(model, sources, transform, protocol, *args, **kwargs)

        monkeypatch.setattr(module, "split_features", spy)
    recipe = write_recipe(tmp_path, tiny_dataset, "test_vit")
    weights = str(tmp_path / "test_vit.safetensors")
    run = acclimate.train(
        recipe,
        run_dir=tmp_path / "run",
        trainer={"max_epochs": 1},
        eval={"features": "last2", "pictures": False},
    )
    assert seen["monitor"] and set(seen["monitor"]) == {"last2"}
    assert len(seen["before/after"]) == 2 and set(seen["before/after"]) == {"last2"}
    assert run.metrics["before"]["features"] == run.metrics["after"]["features"] == "last2"
    meta = json.loads((run.export / "acclimate.json").read_text())
    assert (meta["features"], meta["feature_dim"]) == ("last2", 192)
    assert "frozen `last2` features" in (run.export / "README.md").read_text()

    # evaluate: the start (a timm name) is measured on the export's kind too
    report = tmp_path / "evaluation"
    flags = ["--image-size", "32", "--no-plots", "--shots", "1", "--seeds", "1"]
    args = ["evaluate", "test_vit", str(run.export), "--weights", weights]
    assert main([*args, "--data", str(tiny_dataset), "--out", str(report), *flags]) == 0
    result = json.loads((report / "metrics.json").read_text())
    assert result["features"] == "last2"
    assert "Frozen `last2` features" in (report / "report.md").read_text()
    assert json.loads((run.export / "acclimate.json").read_text())["evaluation"]["features"] == (
        "last2"
    )

    # embed: the export's kind unless told otherwise
    val = str(tiny_dataset / "val")
    assert main(["embed", str(run.export), val, "--out", str(tmp_path / "a.npy")]) == 0
    assert np.load(tmp_path / "a.npy").shape == (18, 192)
    flags = ["--out", str(tmp_path / "b.npy"), "--features", "pooled"]
    assert main(["embed", str(run.export), val, *flags]) == 0
    assert np.load(tmp_path / "b.npy").shape == (18, 64)

    # two exports recording different kinds: evaluate asks which one to use
    other = tmp_path / "other"
    export_backbone(_backbone("test_vit", 3), other, **_PRE)
    capsys.readouterr()
    assert main(["evaluate", str(run.export), str(other), "--data", str(tiny_dataset)]) == 2
    assert "record different feature kinds (last2, pooled)" in capsys.readouterr().err
