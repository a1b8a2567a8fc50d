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
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from acclimate.errors import AcclimateError

COMMAND_LINE = "the command line"
TOP_LEVEL_SCALARS: dict[str, Any] = {"name": str, "seed": int, "run_dir": str | None}


class ConfigError(AcclimateError):
    """A recipe problem, stated in one line that names the key and the file that set it."""


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
    from acclimate.eval.evaluate import EvalSettings
    from acclimate.ssl.optim import OptimSettings
    from acclimate.training import TrainerSettings

    return {
        "backbone": create_backbone,
        "adapter": AdapterSettings,
        "data": SSLDataModule,
        "augment": MultiCropTransform,
        "optim": OptimSettings,
        "trainer": TrainerSettings,
        "eval": EvalSettings,
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


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["method.lr=1e-4", "trainer.max_epochs=2"]`` into a nested dict (values as YAML)."""
    for o in overrides:
        if "=" not in o or o.startswith("="):
            raise ConfigError(f"{COMMAND_LINE}: override {o!r} is not of the form key=value")
    try:
        node = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{COMMAND_LINE}: cannot parse overrides ({e.msg})") from None
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
        raise ConfigError(f"recipe {path}: {e.msg}") from None
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
    raise ConfigError(f"{_where(recipe, key)}: {key}: {message}")


def _suggest(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}valid keys: {', '.join(sorted(options))}"


def signature_params(fn: Callable[..., Any], skip: set[str] = frozenset()) -> dict[str, Any]:
    """Parameter name -> (annotation, default) of a callable (for a class, of its __init__)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target)
    out = {}
    for name, p in inspect.signature(target).parameters.items():
        if name == "self" or name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, Any), p.default)
    return out


def check_type(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a type hint (int fits float; lists fit tuples)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(check_type(value, a) for a in args)
    if origin is Literal:
        return value in args
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, Sequence, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(map(check_type, value, args))
        return all(check_type(v, args[0]) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if not typing.get_args(annotation) else text


def _check_section(recipe: Recipe, section: str, fn: Callable[..., Any], given: dict) -> dict:
    """Validate ``given`` against ``fn``'s signature; return it with defaults filled in."""
    params = signature_params(fn, skip=RESERVED.get(section, set()))
    for key, value in given.items():
        dotted = f"{section}.{key}"
        if key not in params:
            _fail(recipe, dotted, f"unknown key; {_suggest(key, list(params))}")
        annotation, _ = params[key]
        if not check_type(value, annotation):
            _fail(recipe, dotted, f"expected {_type_name(annotation)}, got {value!r}")
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
            _fail(recipe, key, f"expected {_type_name(annotation)}, got {data[key]!r}")
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

    method = dict(data.get("method") or {"name": "dino"})
    methods = _methods()
    name = method.pop("name", "dino")
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


def _check_values(recipe: Recipe) -> None:
    """Cross-key checks that signatures alone cannot express."""
    d = recipe.data
    positive = [
        ("data.batch_size", d["data"]["batch_size"]),
        ("data.image_size", d["data"]["image_size"]),
        ("optim.lr", d["optim"]["lr"]),
        ("trainer.max_epochs", d["trainer"]["max_epochs"]),
    ]
    for key, value in positive:
        if value is not None and value <= 0:
            _fail(recipe, key, f"must be positive, got {value}")
    if d["backbone"]["in_chans"] != d["data"]["channels"]:
        _fail(
            recipe,
            "backbone.in_chans",
            f"is {d['backbone']['in_chans']} but data.channels is {d['data']['channels']}; "
            "set them equal (or leave backbone.in_chans out)",
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
