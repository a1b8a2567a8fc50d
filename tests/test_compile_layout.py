"""``trainer.channels_last`` and ``trainer.compile`` change how a step runs, never what it
computes or what it saves: the same loss on a fixed batch, the same ``state_dict`` keys (no
``_orig_mod.``), checkpoints that resume either way, and a compile failure in one line.

Compiling takes tens of seconds even for the tiny test models, so the tests that run compiled
code are marked slow; the unmarked ones check what needs no compilation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import stub_trainer
from torch import Tensor, nn

from acclimate.backbones import create_backbone
from acclimate.backbones.layout import channels_last, is_channels_last
from acclimate.errors import ConfigError
from acclimate.ssl import BYOL, DINO, MAE, OptimSettings, SimCLR, SSLModule
from acclimate.ssl.compiled import (
    compile_errors,
    compile_failure,
    compile_networks,
    is_compiled,
    uncompile,
)
from acclimate.ssl.ema import update_ema

OPTIM = OptimSettings(freeze_backbone_epochs=0, warmup_epochs=0)
RTOL = 1e-4  # another summation order (NHWC kernels, fused compiled kernels), not another result


def _module(name: str, seed: int = 0, **kw) -> SSLModule:
    """A tiny method module with fixed weights, its hooks driven by a stub trainer."""
    torch.manual_seed(seed)
    if name == "dino":
        m = DINO(create_backbone("test_resnet"), 4, OPTIM, out_dim=32, hidden_dim=16, **kw)
    elif name == "simclr":
        m = SimCLR(create_backbone("test_resnet"), 4, OPTIM, proj_hidden_dim=16, proj_dim=8)
    elif name == "byol":
        m = BYOL(create_backbone("test_resnet"), 4, OPTIM, hidden_dim=16, dim=8)
    else:
        m = MAE(create_backbone("test_vit"), 4, OPTIM, decoder_dim=16, decoder_depth=1, **kw)
    stub_trainer(m)
    m.train()
    m.set_backbone_mode(m.backbone)  # as on_train_batch_start
    return m


def _batch(seed: int = 1, b: int = 4, n_local: int = 2) -> tuple[dict, Tensor]:
    g = torch.Generator().manual_seed(seed)
    globals_ = [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]
    locals_ = [torch.randn(b, 3, 16, 16, generator=g) for _ in range(n_local)]
    return {"global": globals_, "local": locals_}, torch.zeros(b, dtype=torch.long)


def _loss(module: SSLModule, batch: tuple[dict, Tensor], seed: int = 2) -> Tensor:
    torch.manual_seed(seed)  # MAE's random masks
    return module.training_step(batch, 0)


# --- channels-last ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dino", "simclr", "byol"])
def test_channels_last_step_equals_the_contiguous_one(name: str) -> None:
    plain, fast = _module(name), _module(name)
    channels_last(fast)
    assert is_channels_last(fast.backbone) and not is_channels_last(plain.backbone)
    a, b = _loss(plain, _batch()), _loss(fast, _batch())
    torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-6)
    assert not torch.allclose(_loss(plain, _batch(seed=3)), a, rtol=RTOL)  # the batch matters


def test_lay_out_gives_every_network_the_trainer_settings_layout() -> None:
    from acclimate.trainer_settings import TrainerSettings

    module, start = _module("dino"), create_backbone("test_resnet")
    TrainerSettings(channels_last=False).lay_out(module, start)
    assert not is_channels_last(module.backbone) and not is_channels_last(start)
    TrainerSettings().lay_out(module, None, start)  # None: a start already measured
    nets = [module.backbone, module.teacher_backbone, start]
    assert all(is_channels_last(n) for n in nets)


# --- compile: no compilation needed -----------------------------------------------------------


def test_compiled_modules_keep_their_state_dict_keys() -> None:
    m = _module("dino", anchor_weight=0.5)
    keys = list(m.state_dict())
    eager = {k: v.clone() for k, v in m.state_dict().items()}
    done = compile_networks(m.networks())
    assert done == [m.backbone, m.anchor.net, m.teacher_backbone]
    assert all(is_compiled(n) for n in done) and not is_compiled(m.head)
    assert list(m.state_dict()) == keys  # a wrapper (torch.compile(net)) adds `_orig_mod.`
    assert not any("_orig_mod" in k for k in m.state_dict())
    m.load_state_dict(eager)  # a checkpoint of an uncompiled run loads strictly, and back
    _module("dino", anchor_weight=0.5).load_state_dict(m.state_dict())
    assert not is_compiled(copy.deepcopy(m.backbone))  # copies (the export's) are plain
    assert uncompile(m) is m and not is_compiled(m)


def test_a_vit_compiles_its_blocks_which_every_path_runs() -> None:
    m = _module("mae", anchor_weight=0.5)
    keys = list(m.state_dict())
    done = compile_networks(m.networks())
    assert done == [m.backbone.blocks, m.anchor.net.blocks]
    assert not is_compiled(m.backbone.patch_embed) and list(m.state_dict()) == keys


def _dynamo_error(message: str) -> Exception:
    from torch._dynamo.exc import BackendCompilerFailed

    return BackendCompilerFailed(lambda *a: None, RuntimeError(message), None)


def test_each_input_size_gets_its_own_static_graph() -> None:
    """A step runs one forward at several sizes (global and local crops, an upsampled teacher
    view). torch.compile's default recompiles the second size with symbolic sizes, a graph that
    for the demo's tf_efficientnet_lite0 did not finish compiling in 115 CPU-minutes."""
    graphs: list[list] = []

    def recording_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(list(example_inputs))
        return gm.forward  # run the traced graph as it is: no C++ compiler needed

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    compile_networks([net], backend=recording_backend)  # type: ignore[arg-type]
    for size in (16, 24, 16, 24):
        net(torch.randn(2, 3, size, size))
    assert len(graphs) == 2  # one per size, each reused

    def static(value: object) -> bool:
        if isinstance(value, Tensor):
            return all(type(d) is int for d in value.shape)
        return not isinstance(value, torch.SymInt)

    assert all(static(v) for g in graphs for v in g)
    torch._dynamo.reset()


def test_compile_failures_become_one_line_naming_the_key() -> None:
    error = _dynamo_error("InvalidCxxCompiler: No working C++ compiler found\n  deep\n  trace")
    line = str(compile_failure(error))
    assert "\n" not in line and line.startswith("trainer.compile: torch.compile failed")
    assert "No working C++ compiler found" in line and "set trainer.compile: false" in line
    with pytest.raises(ConfigError, match="set trainer.compile: false"), compile_errors(True):
        raise _dynamo_error("unsupported op")
    with pytest.raises(RuntimeError, match="backend=") as info, compile_errors(False):
        raise _dynamo_error("unsupported op")  # compile off: not ours to rephrase
    assert not isinstance(info.value, ConfigError)
    with pytest.raises(RuntimeError, match="^a bug$"), compile_errors(True):
        raise RuntimeError("a bug")  # not torch.compile's: keeps its traceback


def test_the_compile_key_is_validated(tmp_path, monkeypatch) -> None:
    from acclimate.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone:\n  name: test_resnet\ndata:\n  train: images\n")
    assert load_recipe(recipe).data["trainer"]["compile"] is False
    with pytest.raises(ConfigError, match="trainer.compile: expected bool"):
        load_recipe(recipe, ["trainer.compile=sometimes"])
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.compile: must be false here.*C\\+\\+ compiler"):
        load_recipe(recipe, ["trainer.compile=true"])
    assert load_recipe(recipe, ["trainer.compile=false"]).data["trainer"]["compile"] is False


# --- compile: compiled code runs (slow: tens of seconds per graph on a small CPU) -------------


def _sgd(module: SSLModule, lr: float = 0.1) -> None:
    """A plain SGD step on the trainable parameters, then the EMA update of the teachers."""
    with torch.no_grad():
        for p in module.parameters():
            if p.grad is not None:
                p.sub_(lr * p.grad)
                p.grad = None
        for ema, online in getattr(module, "ema_pairs", list)():
            update_ema(ema, online, 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dino", "mae"])
def test_compiled_steps_equal_eager_ones(name: str) -> None:
    """Two steps with an SGD + EMA update between them: the compiled graphs read the weights
    changed in place (student and teacher), and their gradients are the eager ones."""
    eager, compiled = _module(name), _module(name)
    compile_networks(compiled.networks())
    for step in range(2):
        a, b = _loss(eager, _batch(seed=step)), _loss(compiled, _batch(seed=step))
        torch.testing.assert_close(b, a, rtol=RTOL, atol=1e-6)
        a.backward()
        b.backward()
        pairs = zip(eager.named_parameters(), compiled.named_parameters(), strict=True)
        for (name_a, p), (name_b, q) in pairs:
            assert name_a == name_b and (p.grad is None) == (q.grad is None), name_a
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5)
        _sgd(eager)
        _sgd(compiled)
    assert is_compiled(compiled.backbone)


@pytest.mark.slow
def test_a_compiler_that_fails_stops_with_one_line() -> None:
    def failing_backend(gm: nn.Module, example_inputs: list) -> None:
        raise RuntimeError("this backend lowers nothing\nsee the trace")

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    compile_networks([net], backend=failing_backend)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info, compile_errors(True):
        net(torch.randn(2, 3))
    assert "\n" not in str(info.value) and "this backend lowers nothing" in str(info.value)
    assert info.value.__suppress_context__  # no deep trace under the line


@pytest.mark.slow
def test_compiled_run_resumes_uncompiled_and_back(tmp_path, tiny_dataset) -> None:
    """A compiled run (with its before/after evaluation) saves the keys of an uncompiled one,
    resumes without compiling, then compiled again, and exports for timm. Global crops only
    and no frozen warm-up or monitor, so that few graphs compile."""
    import timm
    from test_cli import write_recipe

    import acclimate

    recipe = write_recipe(tmp_path, tiny_dataset, "test_resnet")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    keys = []
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    fewer_graphs = {"augment.n_local": 0, "optim.freeze_backbone_epochs": 0}
    fewer_graphs |= {"eval.every_n_epochs": 0, "trainer.max_epochs": 1}
    run = acclimate.train(
        recipe, run_dir=tmp_path / "run", export=False, trainer={"compile": True}, **fewer_graphs
    )
    assert run.metrics["after"]["n_test"] == run.metrics["before"]["n_test"] == 18
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    for epochs, compile_ in ((1, True), (2, False), (3, True)):
        if epochs > 1:
            overrides = {"trainer": {"compile": compile_, "max_epochs": epochs}}
            run = acclimate.train(run.folder, resume=True, export=(epochs == 3), **overrides)
        saved = torch.load(last, weights_only=True)
        keys.append(list(saved["state_dict"]))
        assert saved["epoch"] == epochs - 1
    # the recipe's method built without compiling: the keys that an uncompiled run saves
    plain = DINO(create_backbone("test_resnet"), 8, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    assert keys[0] == keys[1] == keys[2] and set(keys[0]) == set(plain.state_dict())
    model = timm.create_model(f"local-dir:{run.export}", pretrained=True, num_classes=0)
    assert set(model.state_dict()) == set(create_backbone("test_resnet").state_dict())
