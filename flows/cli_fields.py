"""Command-line flags derived from a settings model: one flag per field, its help the field's
description, so the CLI, `prefect deployment run` and the Prefect UI's form name the same knobs.

A flag not given is None and leaves the field's default (or, for train, the preset's value);
pydantic then validates the whole set, so a bad value gets the same message everywhere.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Callable


def _kind(annotation):
    """The argparse type of a field: 'bool' for a switch, else a converter."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation, args = args[0], list(typing.get_args(args[0]))  # `int | None`: None means "not given"
    if annotation is bool:
        return "bool"
    if typing.get_origin(annotation) is typing.Literal:
        return type(args[0])  # pydantic checks the value, with the same message as in the UI
    if typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        return lambda v: [item(x) for x in v.split(",") if x.strip()]
    if annotation in (int, float, Path):
        return annotation
    return str


def add_fields(parser: argparse.ArgumentParser, model, skip: set[str], default: Callable[[str, object], str], short: dict[str, str] | None = None) -> None:
    """A flag per field of `model` not in `skip`; `default(name, field)` words its default in the help."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flags = ["--" + name.replace("_", "-"), *([short[name]] if short and name in short else [])]
        kind = _kind(field.annotation)
        help = f"{field.description}{default(name, field)}"
        if kind == "bool":
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help)
        else:
            parser.add_argument(*flags, type=kind, default=None, help=help)


def given(args: argparse.Namespace, model, skip: set[str]) -> dict:
    """The fields set on the command line."""
    return {n: getattr(args, n) for n in model.model_fields if n not in skip and getattr(args, n, None) is not None}


def field_default(name: str, field) -> str:
    """' (default X)', unless the description already says what the default is."""
    return "" if "default" in (field.description or "") else f" (default {field.default})"


def share(text: str) -> float:
    """An argparse type: a number between 0 and 1 (a blend's share)."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value
