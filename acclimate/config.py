"""Recipes: layered YAML files, dotted ``key=value`` overrides, validation against signatures.

A recipe is a YAML mapping of sections. Each section's keys are the keyword arguments of one
constructor or function (see ``SECTIONS``), so defaults have one home: that signature. Loading
merges the ``base:`` chain (parent first), applies command-line overrides, then checks every key
against the signature: an unknown or misspelt key, a wrong type or an impossible value raises
``ConfigError`` naming the key and the file that set it, before any work starts.
"""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from acclimate.errors import AcclimateError, ConfigError
from acclimate.rules import RULES, available_accelerators
from acclimate.signatures import check_type, signature_params, type_name

COMMAND_LINE = "the command line"
TOP_LEVEL_SCALARS: dict[str, Any] = {"name": str, "seed": int, "run_dir": str | None}


@dataclass
class Recipe:
    """A merged, validated recipe: plain nested dicts plus where each key came from."""

    data: dict[str, Any]
    files: list[Path]
    origin: dict[str, str] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.data.get(name) or {})

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.data))


def _sections() -> dict[str, Callable[..., Any]]:
    # Imported lazily: the recipe schema is the signatures of these callables.
    from acclimate.adapters import AdapterSettings
    from acclimate.backbones import create_backbone
    from acclimate.data.datamodule import SSLDataModule
    from acclimate.data.transforms import MultiCropTransform
    from acclimate.eval.protocol import EvalSettings
    from acclimate.export.blend import ExportSettings
    from acclimate.ssl.optim import OptimSettings
    from acclimate.trainer_settings import TrainerSettings

    return {
        "backbone": create_backbone,
        "adapter": AdapterSettings,
        "data": SSLDataModule,
        "augment": MultiCropTransform,
        "optim": OptimSettings,
        "trainer": TrainerSettings,
        "eval": EvalSettings,
        "export": ExportSettings,
    }


def _methods() -> dict[str, type]:
    from acclimate.ssl import METHODS

    return METHODS


# Arguments that the training entry point fills in itself; a recipe may not set them.
RESERVED = {
    "data": {"transform", "bad_file_log"},
    "augment": {"mean", "std", "channels", "clip"},
    "method": {"backbone", "batch_size", "optim"},
}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out[key] = v
            out.update(_flatten(v, key))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe {path}: file not found")
    try:
        node = OmegaConf.load(path)
    except (OmegaConfBaseException, Exception) as e:  # yaml.YAMLError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"recipe {path}: not valid YAML ({first})") from None
    data = OmegaConf.to_container(node, resolve=False)
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of sections at the top level")
    return data


def _chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """Return the ``base:`` chain of ``path``, parents first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"recipe {path}: 'base:' chain loops back to itself")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return [(path, data)]
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"recipe {path}: 'base' must be a path or a list of paths")
    chain: list[tuple[Path, dict[str, Any]]] = []
    for b in bases:
        parent = (path.parent / b) if not Path(b).is_absolute() else Path(b)
        if not parent.is_file():
            raise ConfigError(f"recipe {path}: base {b!r} not found (looked at {parent})")
        chain += _chain(parent, seen + (path,))
    return chain + [(path, data)]


def _one_line(text: str) -> str:
    """A library's message as one line (omegaconf appends ``full_key: ...`` lines)."""
    return " ".join(str(text).split()) or "invalid"


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["method.lr=1e-4", "trainer.max_epochs=2"]`` into a nested dict (values as YAML)."""
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"{COMMAND_LINE}: override {o!r} is not of the form key=value")
    try:
        node = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{COMMAND_LINE}: cannot parse overrides ({_one_line(e.msg)})") from None
    except (ValueError, TypeError) as e:  # omegaconf: a key under a list (a=[] then a.b=1)
        raise ConfigError(
            f"{COMMAND_LINE}: cannot parse overrides ({_one_line(str(e))}; a key under a list "
            "needs an integer index, and a section set to a list has no keys)"
        ) from None
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Merge the ``base:`` chain of ``path`` and ``overrides``, validate, and fill in defaults."""
    path = Path(path)
    chain, seen = [], set()
    for file, data in _chain(path):  # a file reached twice (diamond bases) counts where first met
        if file not in seen:
            seen.add(file)
            chain.append((file, data))
    origin: dict[str, str] = {}
    layers = []
    for file, data in chain:
        layers.append(OmegaConf.create(data))
        origin.update({k: str(file) for k in _flatten(data)})
    cli = parse_overrides(overrides)
    layers.append(OmegaConf.create(cli))
    origin.update({k: COMMAND_LINE for k in _flatten(cli)})
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(*layers), resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f"recipe {path}: {_one_line(e.msg)}") from None
    except TypeError as e:  # omegaconf: a list where a mapping was (e.g. the override data=[])
        raise ConfigError(
            f"recipe {path}: {_one_line(str(e))} (a section must be a mapping)"
        ) from None
    recipe = Recipe(data=merged, files=[f for f, _ in chain], origin=origin)  # type: ignore[arg-type]
    return validate(recipe, default_name=path.stem)


def _where(recipe: Recipe, key: str) -> str:
    src = recipe.origin.get(key)
    if src is None:
        # a parent key may have been set as a whole mapping
        parts = key.split(".")
        for i in range(len(parts) - 1, 0, -1):
            src = recipe.origin.get(".".join(parts[:i]))
            if src:
                break
    return src or str(recipe.files[-1])


def _fail(recipe: Recipe, key: str, message: str) -> typing.NoReturn:
    raise recipe_error(recipe, key, message)


def recipe_error(recipe: Recipe, key: str, message: str) -> ConfigError:
    """The error of a check made once the recipe's objects exist (e.g. a feature kind that the
    backbone cannot give): one line naming ``key`` and the file that set it."""
    return ConfigError(_one_line(f"{_where(recipe, key)}: {key}: {message}"))


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid keys: {', '.join(sorted(options))}"


def _quote_hint(value: Any, annotation: Any) -> str:
    """Why a number came where text was expected: YAML 1.1 (omegaconf, files and overrides)
    reads unquoted 1:30:00 as the sexagesimal number 5400 and 1e3 or 007 as numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ""
    if "str" not in type_name(annotation):
        return ""
    return (
        "; YAML read the unquoted value as a number (1:30:00 becomes 5400): put it in "
        'quotes in a recipe (max_time: "00:01:30:00"); on the command line a leading 00: '
        "keeps it text (trainer.max_time=00:01:30:00)"
    )


def _check_section(recipe: Recipe, section: str, fn: Callable[..., Any], given: dict) -> dict:
    """Validate ``given`` against ``fn``'s signature; return it with defaults filled in."""
    params = signature_params(fn, skip=RESERVED.get(section, set()))
    for key, value in given.items():
        dotted = f"{section}.{key}"
        if key not in params:
            _fail(recipe, dotted, f"unknown key; {_suggest(key, list(params))}")
        annotation, _ = params[key]
        if not check_type(value, annotation):
            _fail(
                recipe,
                dotted,
                f"expected {type_name(annotation)}, got {value!r}{_quote_hint(value, annotation)}",
            )
    missing = [k for k, (_, d) in params.items() if d is inspect.Parameter.empty and k not in given]
    if missing:
        _fail(recipe, f"{section}.{missing[0]}", "required key is missing")
    return {k: given.get(k, d) for k, (_, d) in params.items()}


def validate(recipe: Recipe, default_name: str = "run") -> Recipe:
    """Check every section of a merged recipe and fill in defaults from the signatures."""
    data = recipe.data
    sections = _sections()
    known = set(sections) | {"method"} | set(TOP_LEVEL_SCALARS)
    for key in data:
        if key not in known:
            _fail(recipe, key, f"unknown section; {_suggest(key, sorted(known))}")
    for key, annotation in TOP_LEVEL_SCALARS.items():
        if key in data and not check_type(data[key], annotation):
            _fail(recipe, key, f"expected {type_name(annotation)}, got {data[key]!r}")
    out: dict[str, Any] = {
        "name": data.get("name", default_name),
        "seed": data.get("seed", 0),
        "run_dir": data.get("run_dir"),
    }
    for section in ("backbone", "data"):
        if not isinstance(data.get(section), dict):
            _fail(recipe, section, "section is missing; a recipe needs backbone: and data:")
    for section, fn in sections.items():
        given = data.get(section) or {}
        if not isinstance(given, dict):
            _fail(recipe, section, f"expected a mapping of keys, got {given!r}")
        out[section] = _check_section(recipe, section, fn, given)

    given_method = data.get("method") or {"name": "dino"}
    if not isinstance(given_method, dict):
        _fail(recipe, "method", f"expected a mapping of keys, got {given_method!r}")
    method = dict(given_method)
    methods = _methods()
    name = method.pop("name", "dino")
    if not isinstance(name, str):
        _fail(recipe, "method.name", f"expected one of {', '.join(methods)}, got {name!r}")
    if name not in methods:
        _fail(recipe, "method.name", f"unknown method {name!r}; {_suggest(name, list(methods))}")
    out["method"] = {"name": name, **_check_section(recipe, "method", methods[name], method)}
    problem = methods[name].check_backbone(out["backbone"]["name"])
    if problem:
        _fail(recipe, "method.name", problem)
    if data["backbone"].get("in_chans") is None:  # not given: follow the data
        out["backbone"]["in_chans"] = out["data"]["channels"]
    recipe.data = out
    _check_values(recipe)
    return recipe


def _numbers(value: Any) -> list[float]:
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, float) else []


def _check_values(recipe: Recipe) -> None:
    """Every value against its row of ``RULES``, then the checks that involve two keys."""
    d = recipe.data
    for key, value in _flatten(d).items():
        if any(not math.isfinite(x) for x in _numbers(value)):
            _fail(recipe, key, f"must be a finite number, got {value!r}")
    for key, rule in RULES.items():
        section, _, name = key.rpartition(".")
        holder = d.get(section) if section else d
        if not isinstance(holder, dict) or name not in holder:
            continue  # a key of another method, or one this version's signature lacks
        problem = rule(holder[name])
        if problem:
            _fail(recipe, key, f"must be {problem}, got {holder[name]!r}")
    _check_pairs(recipe)
    _check_devices(recipe)


def _check_pairs(recipe: Recipe) -> None:
    """Keys that must agree with another key."""
    d = recipe.data
    channels = d["data"]["channels"]
    if d["backbone"]["in_chans"] != channels:
        _fail(
            recipe,
            "backbone.in_chans",
            f"is {d['backbone']['in_chans']} but data.channels is {channels}; "
            "set them equal (or leave backbone.in_chans out)",
        )
    for key in ("bands", "mean", "std"):
        value = d["data"][key]
        if isinstance(value, list) and len(value) != channels:
            _fail(
                recipe,
                f"data.{key}",
                f"must have one value per channel (data.channels: {channels}), got {value!r}",
            )
    if d["optim"]["min_lr"] > d["optim"]["lr"]:
        _fail(
            recipe,
            "optim.min_lr",
            f"must be <= optim.lr ({d['optim']['lr']}), got {d['optim']['min_lr']!r}",
        )
    if d["export"]["start_blend"] != 1.0 and d["backbone"]["weights"] is None:
        _fail(
            recipe,
            "export.start_blend",
            "must be 1 when the backbone starts from random weights (backbone.weights: null): "
            "there is no start to blend with",
        )
    m = d["method"]
    for start, end in (("momentum_teacher", "momentum_teacher_end"), ("momentum", "momentum_end")):
        if start in m and end in m and m[start] > m[end]:
            _fail(
                recipe, f"method.{end}", f"must be >= method.{start} ({m[start]}), got {m[end]!r}"
            )
    if "decoder_dim" in m and "decoder_heads" in m and m["decoder_dim"] % m["decoder_heads"]:
        _fail(
            recipe,
            "method.decoder_dim",
            f"must be a multiple of method.decoder_heads ({m['decoder_heads']}), "
            f"got {m['decoder_dim']!r}",
        )


def _check_devices(recipe: Recipe) -> None:
    """``trainer.devices`` against the accelerator it will run on."""
    t = recipe.data["trainer"]
    known = available_accelerators()
    accelerator = t["accelerator"]
    if accelerator == "auto":
        accelerator = "cuda" if known.get("cuda") else "mps" if known.get("mps") else "cpu"
    devices = t["devices"]
    if accelerator == "cpu" and not (
        devices == "auto"
        or (isinstance(devices, int) and devices >= 1)
        or (isinstance(devices, str) and devices.isdigit() and int(devices) >= 1)
    ):
        _fail(
            recipe,
            "trainer.devices",
            f"must be auto or a process count >= 1 on the CPU, got {devices!r}",
        )
    if accelerator in ("cuda", "gpu") and known.get("cuda"):
        import torch

        count = torch.cuda.device_count()
        wanted = (
            devices
            if isinstance(devices, int)
            else len(devices)
            if isinstance(devices, list)
            else None
        )
        if wanted is not None and wanted > count:
            _fail(
                recipe,
                "trainer.devices",
                f"must be at most {count} (the GPUs on this machine) or -1, got {devices!r}",
            )


def construct(recipe: Recipe, section: str, fn: Callable[..., Any], **runtime: Any) -> Any:
    """Call ``fn`` with a validated section; a ValueError it raises names the section's file."""
    kwargs = recipe.section(section)
    if section == "method":
        kwargs.pop("name")
    try:
        return fn(**kwargs, **runtime)
    except AcclimateError:
        raise
    except ValueError as e:  # a constructor's own value check: name the recipe and section
        raise ConfigError(f"{_where(recipe, section)}: {section}: {e}") from None
