"""Command-line flags generated from the `Settings` fields: names, help text, defaults, ranges.

Every field becomes `--field-name`; a boolean becomes a pair (`--x` / `--no-x`, or for a field
named `no_x`, `--no-x` / `--x`), so a flag can switch off what the environment switched on.
Values are passed on as text and validated by `Settings` itself, so a flag, a variable and a
file key are checked by the same rules and reported the same way.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from .settings import Settings, env_name


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _plain_type(info: FieldInfo) -> Any:
    """The annotation without `| None`: int, float, bool, str, Path, SecretStr or a Literal."""
    ann = info.annotation
    if get_origin(ann) in (Union, types.UnionType):
        rest = [a for a in get_args(ann) if a is not type(None)]
        ann = rest[0] if len(rest) == 1 else str
    return ann


def choices(info: FieldInfo) -> tuple[Any, ...] | None:
    ann = _plain_type(info)
    return get_args(ann) if get_origin(ann) is Literal else None


def is_switch(info: FieldInfo) -> bool:
    return _plain_type(info) is bool


def is_secret(info: FieldInfo) -> bool:
    return _plain_type(info) is SecretStr


def switch_flags(field: str) -> tuple[str, str]:
    """(the flag that sets it true, the flag that sets it false)."""
    on = flag_name(field)
    off = "--" + on[5:] if on.startswith("--no-") else "--no-" + on[2:]
    return on, off


def range_text(info: FieldInfo) -> str | None:
    """The declared bounds as `lo..hi`, `>= lo`, `> lo and <= hi`..., or None when unbounded."""
    low = high = None
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            low = f">= {bound.ge}"
        elif isinstance(bound, annotated_types.Gt):
            low = f"> {bound.gt}"
        elif isinstance(bound, annotated_types.Le):
            high = f"<= {bound.le}"
        elif isinstance(bound, annotated_types.Lt):
            high = f"< {bound.lt}"
    if low and high and low.startswith(">=") and high.startswith("<="):
        return f"{low[3:]}..{high[3:]}"
    return " and ".join(b for b in (low, high) if b) or None


def allowed_text(info: FieldInfo) -> str:
    """What a valid value looks like, for an error message."""
    options = choices(info)
    if options is not None:
        return "one of " + ", ".join(map(str, options))
    kind = _plain_type(info)
    if kind is bool:
        return "true or false (1/0, yes/no, on/off)"
    noun = {int: "an integer", float: "a number"}.get(kind, "a text")
    bounds = range_text(info)
    if bounds and ".." in bounds:
        low, high = bounds.split("..")
        return f"{noun} from {low} to {high}"
    return f"{noun} {bounds}" if bounds else noun


def default_text(info: FieldInfo) -> str:
    if _plain_type(info) is SecretStr:
        return "unset"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if value == "" else str(value)


def _metavar(info: FieldInfo) -> str:
    options = choices(info)
    if options is not None:
        return "{" + ",".join(map(str, options)) + "}"
    kind = _plain_type(info)
    names = {int: "INT", float: "NUM", str: "TEXT", SecretStr: "KEY", Path: "PATH"}
    return names.get(kind, "VALUE")


def help_text(field: str, info: FieldInfo) -> str:
    extra = [f"default: {default_text(info)}"]
    bounds = range_text(info)
    if bounds:
        extra.append(bounds)
    extra.append(env_name(field))
    text = f"{info.description or field.replace('_', ' ')} ({'; '.join(extra)})"
    return text.replace("%", "%%")  # argparse formats help with %


class _Switch(argparse.Action):
    """`--x` stores True, its negation False; absent, the field keeps env/file/default."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, option_string == self.option_strings[0])

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `Settings` field; a flag left out is absent from the parsed namespace."""
    group = parser.add_argument_group("settings (flags > GATEHOUSE_* variables > --config file)")
    for field, info in Settings.model_fields.items():
        text = help_text(field, info)
        if is_switch(info):
            group.add_argument(
                *switch_flags(field),
                dest=field,
                action=_Switch,
                default=argparse.SUPPRESS,
                help=text,
            )
        else:
            group.add_argument(
                flag_name(field),
                dest=field,
                metavar=_metavar(info),
                default=argparse.SUPPRESS,
                help=text,
            )
