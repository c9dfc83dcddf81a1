"""What users write by hand, checked: YAML/JSON files (syntax errors name the file and line) and dataclass
fields against their declared annotations.

A config or task spec is often written by hand (JSON, YAML, keyword arguments), so `"0.25"` for a float, `2`
for a list or `"false"` for a bool reach the dataclass unconverted; without a check they fail deep inside
(a TypeError in a layer) or, worse, pass (`bool("false")` is True). One checker reads the annotations, so a
field added later is checked too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import MedSAFileNotFoundError, MedSAValueError


def load_data_file(path: str | Path) -> Any:
    """The data of a YAML or JSON file (by suffix); a missing file or a syntax error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MedSAFileNotFoundError(f"No file at {path}.")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise MedSAValueError(f"{path}, line {error.lineno}: invalid JSON ({error.msg}).") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise MedSAValueError(
            f"{path}{where}: invalid YAML ({getattr(error, 'problem', None) or error})."
        ) from error


def check_field_types(instance: Any, where: str, names: typing.Iterable[str] | None = None) -> None:
    """Raise `MedSAValueError` naming the first field of the dataclass `instance` whose value does not match
    its annotation (floats must also be finite). `names` limits the check to those fields."""
    hints = typing.get_type_hints(type(instance))
    fields = [f.name for f in dataclasses.fields(instance) if names is None or f.name in names]
    for name in fields:
        value = getattr(instance, name)
        problem = type_problem(value, hints[name])
        if problem:
            raise MedSAValueError(
                f"{where}: `{name}` must be {describe(hints[name])}, got {value!r} ({problem})."
            )


def checked_arguments(dataclass_types: typing.Iterable[type], data: Any, source: str) -> dict[str, Any]:
    """Arguments read from a file for `HfArgumentParser.parse_dict`: unknown keys and values of the wrong type
    are refused naming the file and key; strings are converted as the command line would (`"1e-3"`, `"true"`)."""
    if not isinstance(data, Mapping):
        raise MedSAValueError(f"{source} must hold a mapping of argument names to values, got {_kind(data)}.")
    hints = {}
    for cls in dataclass_types:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        hints.update({name: hint for name, hint in typing.get_type_hints(cls).items() if name in names})
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise MedSAValueError(
            f"{source}: unknown argument(s) {unknown}; see `medsa train --help` for the names."
        )
    checked = {}
    for key, value in data.items():
        value = _from_string(value, hints[key]) if isinstance(value, str) else value
        problem = type_problem(value, hints[key])
        if problem:
            raise MedSAValueError(
                f"{source}: `{key}` must be {describe(hints[key])}, got {value!r} ({problem})."
            )
        checked[key] = value
    return checked


def _from_string(value: str, annotation: Any) -> Any:
    """A string given for a number or bool, converted as argparse would; other strings stay as they are."""
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else ()
    for kind in (bool, int, float):
        if annotation is kind or kind in options:
            try:
                if kind is bool:
                    return {"true": True, "false": False, "yes": True, "no": False}[value.lower()]
                return kind(value)
            except (KeyError, ValueError):
                continue
    return value


def lists_to_tuples(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`data` for the dataclass `cls` with each list given to a tuple-typed field made a tuple (YAML and
    JSON have no tuples); the types themselves are checked by the dataclass."""
    hints = typing.get_type_hints(cls)
    return {
        key: tuple(value) if isinstance(value, list) and key in hints and _is_tuple(hints[key]) else value
        for key, value in data.items()
    }


def _is_tuple(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return any(_is_tuple(option) for option in typing.get_args(annotation))
    return annotation is tuple or typing.get_origin(annotation) is tuple


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why `value` does not fit `annotation` (e.g. 'a str', 'not finite'), or None if it does."""
    if annotation is Any:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        problems = [type_problem(value, option) for option in args]
        if None in problems:
            return None
        # The option whose container matched says which item is wrong; otherwise name the value's type.
        return next((p for p in problems if not p.startswith("a ")), _kind(value))
    if annotation is type(None):
        return None if value is None else _kind(value)
    if origin is Literal:
        return None if value in args and type(value) is type(args[0]) else "not one of the choices"
    if annotation is bool:
        return None if isinstance(value, bool) else _kind(value)
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else _kind(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _kind(value)
        return None if math.isfinite(value) else "not finite"
    if annotation is str:
        return None if isinstance(value, str) else _kind(value)
    if origin in (list, tuple, Sequence) or annotation in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return _kind(value)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"{len(value)} items instead of {len(args)}"
            items = zip(value, args, strict=True)
        else:
            items = ((item, args[0] if args else Any) for item in value)
        for index, (item, item_type) in enumerate(items):
            problem = type_problem(item, item_type)
            if problem:
                return f"item {index} is {item!r}: {problem}"
        return None
    if origin in (dict, Mapping) or annotation in (dict, Mapping):
        if not isinstance(value, Mapping):
            return _kind(value)
        key_type, value_type = args or (Any, Any)
        for key, item in value.items():
            problem = type_problem(key, key_type) or type_problem(item, value_type)
            if problem:
                return f"entry {key!r}: {item!r}: {problem}"
        return None
    if isinstance(annotation, type):
        return None if isinstance(value, annotation) else _kind(value)
    return None  # an annotation this checker does not know: accepted as is


def describe(annotation: Any) -> str:
    """An annotation in words: 'a float', 'a list of int or None', "one of 'gelu', 'relu'"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(option) for option in args)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe(a) for a in args)})"
        return f"a list of {_plural(args[0]) if args else 'values'}"
    if origin in (dict, Mapping):
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}" if args else "a mapping"
    name = getattr(annotation, "__name__", str(annotation))
    return {"float": "a finite number", "int": "an integer", "bool": "true or false", "str": "a string"}.get(
        name, f"a {name}"
    )


def _plural(annotation: Any) -> str:
    names = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans"}
    return names.get(annotation, describe(annotation))


def _kind(value: Any) -> str:
    return f"a {type(value).__name__}"
