"""The base of every request body: text that cannot be UTF-8 and booleans posing as numbers
are refused here, before any field is validated, so no route ever sees them.

JSON may carry a lone UTF-16 surrogate (`"\\ud800"`): Python decodes it into a `str` that
cannot be encoded as UTF-8, so the answer echoing it (tokens, log lines) failed with a 500
after the work, and a session feed had already advanced. pydantic's lax mode also reads
`true` as the integer 1 (`"top_k": true`); a client sending that has a bug worth a 422.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel, model_validator
from pydantic_core import PydanticCustomError

_NOT_UTF8 = "not_utf8_text"
_BOOL = "bool_not_number"


def _where(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "body"


def find_unencodable(value: Any, path: tuple[str | int, ...] = ()) -> tuple[str, int] | None:
    """The location and character offset of the first string in `value` (JSON data: dicts,
    lists, strings) that UTF-8 cannot encode, or None."""
    if isinstance(value, str):
        if value.isascii():  # the common case, and far cheaper than encoding
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return _where(path), e.start
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (bad := find_unencodable(key, path)) is not None:
                return f"{bad[0]} (a key)", bad[1]
            if (bad := find_unencodable(item, (*path, str(key)))) is not None:
                return bad
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if (bad := find_unencodable(item, (*path, i))) is not None:
                return bad
    return None


def admits_bool(annotation: Any) -> bool:
    """Whether a field of this type may hold a JSON boolean."""
    if annotation is bool or annotation is Any or annotation is object:
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return admits_bool(args[0])
    if origin is typing.Literal:
        return any(isinstance(a, bool) for a in args)
    if origin is Union or origin is types.UnionType:
        return any(admits_bool(a) for a in args)
    return False


def _list_item(annotation: Any) -> Any | None:
    """The item type when `annotation` is (optionally) a list, else None."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _list_item(args[0])
    if origin is list and args:
        return args[0]
    if origin is Union or origin is types.UnionType:
        items = [i for a in args if (i := _list_item(a)) is not None]
        return items[0] if len(items) == 1 else None
    return None


def _misplaced_bool(annotation: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return not admits_bool(annotation)
    if isinstance(value, list) and (item := _list_item(annotation)) is not None:
        return any(isinstance(v, bool) and not admits_bool(item) for v in value)
    return False


class StrictInput(BaseModel):
    """Request bodies: every string must be valid Unicode text (UTF-8 encodable), and a
    boolean is accepted only where the field's type has one."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unencodable_and_bools(cls, data: Any) -> Any:
        bad = find_unencodable(data)
        if bad is not None:
            # The message names the place, never the text: echoing it would fail the same way.
            raise PydanticCustomError(
                _NOT_UTF8,
                "{where}: not Unicode text (a lone UTF-16 surrogate at character {at})",
                {"where": bad[0], "at": bad[1]},
            )
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if name in data and _misplaced_bool(field.annotation, data[name]):
                    raise PydanticCustomError(
                        _BOOL, "{name}: a boolean where a number belongs", {"name": name}
                    )
        return data
