"""The recipe schema is the signatures of the callables that take each section
(`acclimate.config`): their parameters, type hints and defaults, and whether a YAML value fits a
hint."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union


def signature_params(fn: Callable[..., Any], skip: set[str] = frozenset()) -> dict[str, Any]:
    """Parameter name -> (annotation, default) of a callable (for a class, of its __init__).

    A class whose ``__init__`` takes ``**kwargs`` passes them to its parent's (as `DINOv2` does
    to `DINO`): the parent's parameters are the class's too."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints = typing.get_type_hints(target)
    out, forwards = {}, False
    for name, p in inspect.signature(target).parameters.items():
        forwards |= p.kind == p.VAR_KEYWORD
        if name == "self" or name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = (hints.get(name, Any), p.default)
    if forwards and inspect.isclass(fn):
        parent = next((c for c in fn.__mro__[1:] if "__init__" in vars(c)), None)
        if parent is not None and parent is not object:
            for name, value in signature_params(parent, skip).items():
                out.setdefault(name, value)
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


def type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if not typing.get_args(annotation) else text
