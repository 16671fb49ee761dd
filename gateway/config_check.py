"""Validation of a decoded TOML document against the configuration Structs, key by key.

``msgspec.convert`` stops at the first problem of whatever it converts, so converting each
top-level table at once showed one mistake per table. Here every key of every table is checked
on its own against the Struct field it names (``msgspec.structs.fields``), recursing into
sub-tables ([wan.identity], [policy.flood]), arrays of tables ([[trunks]], [[routes]],
[[policy.dialplan.rules]]) and tables keyed by the operator ([policy.dialplan.phones."201"]).
Each problem says what was expected (a type, one of a set of values, a required option) and
an unknown name gets a "did you mean" from the names the table does have.

What is wrong is removed, so the caller can still build a configuration from the rest (each
removed value falls back to its default) and run the cross-field checks on it: one run shows
every problem of the file. Pure functions over Python values: no file, no clock.

Also here: :class:`LineLocator`, which finds the line of a field path in the TOML text (TOML
v1.0.0 tables, arrays of tables and dotted keys), so each problem can name its line.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import msgspec
import msgspec.inspect as mi

#: A (field path, message) pair; the caller adds the file and the line.
Problem = tuple[str, str]


class _Dropped:
    """Marks a value removed because it is wrong (None is a legitimate TOML-less value)."""


DROPPED = _Dropped()


def did_you_mean(name: str, choices: Iterable[str], form: str = "{}") -> str | None:
    """The closest of ``choices`` to a misspelt ``name``, each written with ``form`` ("a",
    or "a or b" when two are as close), if any is close enough."""
    scored = sorted(
        (-difflib.SequenceMatcher(None, name, c).ratio(), c) for c in set(choices) if c != name
    )
    best = [c for score, c in scored if score == scored[0][0] and -score >= 0.6] if scored else []
    return " or ".join(form.format(c) for c in best[:2]) or None


def check_document(
    raw: dict[str, Any], root: type[msgspec.Struct], hidden: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[Problem]]:
    """Check a whole TOML document against ``root`` (whose fields are its tables).

    ``hidden`` are fields of ``root`` the file may not set (set by the loader). Returns the
    document with every wrong part removed, and the problems in document order.
    """
    fields = {f.encode_name: f for f in msgspec.structs.fields(root) if f.name not in hidden}
    kept: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in raw.items():
        info = fields.get(key)
        if info is None:
            guess = did_you_mean(key, fields, "[{}]")
            known = f"did you mean {guess}?" if guess else f"known: {', '.join(sorted(fields))}"
            problems.append((key, f"unknown table; {known}"))
            continue
        cleaned, found = check_value(value, info.type, key)
        problems += found
        if cleaned is not DROPPED:
            kept[key] = cleaned
    return kept, problems


def check_value(value: Any, typ: Any, path: str) -> tuple[Any, list[Problem]]:
    """Check one value against a field type; returns (value or DROPPED, problems)."""
    info = mi.type_info(typ)
    struct = _struct_in(info)
    if struct is not None and isinstance(value, dict):
        return _check_struct(value, struct, path)
    items = _items_of(info)
    if items is not None and isinstance(value, list):
        kept_items: list[Any] = []
        problems: list[Problem] = []
        for index, item in enumerate(value):
            cleaned, found = _check_struct_or_leaf(item, items, f"{path}.{index}")
            problems += found
            if cleaned is not DROPPED:
                kept_items.append(cleaned)
        return kept_items, problems
    values = _values_of(info)
    if values is not None and isinstance(value, dict):
        kept_map: dict[str, Any] = {}
        problems = []
        for key, item in value.items():
            cleaned, found = _check_struct_or_leaf(item, values, f"{path}.{key}")
            problems += found
            if cleaned is not DROPPED:
                kept_map[key] = cleaned
        return kept_map, problems
    try:
        msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError as exc:
        field, message = split_error(str(exc), path)
        return DROPPED, [(field, explain(message, info, value))]
    return value, []


def _check_struct_or_leaf(value: Any, cls: Any, path: str) -> tuple[Any, list[Problem]]:
    if isinstance(value, dict):
        return _check_struct(value, cls, path)
    return check_value(value, cls, path)


def _check_struct(value: dict[str, Any], cls: Any, path: str) -> tuple[Any, list[Problem]]:
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    kept: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, item in value.items():
        info = fields.get(key)
        if info is None:
            guess = did_you_mean(key, fields)
            hint = f"; did you mean {guess}?" if guess else ""
            problems.append((f"{path}.{key}", f"unknown option{hint}"))
            continue
        cleaned, found = check_value(item, info.type, f"{path}.{key}")
        problems += found
        if cleaned is not DROPPED:
            kept[key] = cleaned
    missing = [f for f in msgspec.structs.fields(cls) if f.required and f.encode_name not in value]
    for info in missing:
        expected = describe(mi.type_info(info.type))
        problems.append((f"{path}.{info.encode_name}", f"required option missing ({expected})"))
    if missing or any(f.required and f.encode_name not in kept for f in fields.values()):
        return DROPPED, problems
    # Each key is right on its own; what the Struct checks across its keys (__post_init__)
    # runs on what is left. It stops at its first complaint: when that names one option, the
    # option is set aside and the check runs again, so the next complaint shows too.
    while True:
        try:
            msgspec.convert(kept, cls, strict=True)
        except msgspec.ValidationError as exc:
            field, message = split_error(str(exc), path)
            blamed = _blame(field, message, kept)
            problems.append((blamed, message))
            option = blamed.rpartition(".")[2]
            if blamed == field or option not in kept:
                return DROPPED, problems
            del kept[option]
            continue
        return kept, problems


def _blame(field: str, message: str, fields: Iterable[str]) -> str:
    """A Struct-wide check's message often starts with the option it is about ("lan: ...",
    "ban_growth must be ..."): point at that option rather than at the table."""
    first = re.match(r"(\w+)\b", message)
    if first and first.group(1) in fields:
        return f"{field}.{first.group(1)}"
    return field


def _struct_in(info: mi.Type) -> Any:
    """The Struct class of a field typed ``S`` or ``S | None``, else None."""
    if isinstance(info, mi.StructType):
        return info.cls
    if isinstance(info, mi.UnionType):
        found = [t.cls for t in info.types if isinstance(t, mi.StructType)]
        return found[0] if len(found) == 1 else None
    return None


def _items_of(info: mi.Type) -> Any:
    """The Struct item class of ``tuple[S, ...]`` / ``list[S]`` (arrays of tables)."""
    if isinstance(info, mi.VarTupleType | mi.ListType) and isinstance(
        info.item_type, mi.StructType
    ):
        return info.item_type.cls
    return None


def _values_of(info: mi.Type) -> Any:
    """The Struct value class of ``dict[str, S]`` (tables keyed by the operator)."""
    if isinstance(info, mi.DictType) and isinstance(info.value_type, mi.StructType):
        return info.value_type.cls
    return None


_ERROR_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def split_error(text: str, prefix: str) -> Problem:
    """msgspec's "Expected `int`, got `str` - at `$.x[1]`" as ("prefix.x.1", message)."""
    m = _ERROR_PATH.match(text)
    message, path = (m.group("msg"), m.group("path") or "") if m else (text, "")
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return prefix + path, message


def explain(message: str, info: mi.Type, value: Any) -> str:
    """msgspec's message, made to say what was expected where it does not already."""
    choices = _literal_values(info)
    if choices is not None and isinstance(value, str):
        guess = did_you_mean(value, [str(c) for c in choices], "'{}'")
        hint = f"; did you mean {guess}?" if guess else ""
        return f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}"
    if message.startswith("Expected `array` of length"):
        return f"{message} ({describe(info)})"
    return message


def _literal_values(info: mi.Type) -> tuple[Any, ...] | None:
    if isinstance(info, mi.LiteralType):
        return tuple(info.values)
    if isinstance(info, mi.VarTupleType | mi.ListType):
        return _literal_values(info.item_type)
    return None


def describe(info: mi.Type) -> str:
    """What a field expects, in the words of a TOML file."""
    if isinstance(info, mi.UnionType):
        parts = [describe(t) for t in info.types if not isinstance(t, mi.NoneType)]
        return " or ".join(parts)
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in info.values)
    if isinstance(info, mi.StructType):
        return "a table"
    if isinstance(info, mi.TupleType):
        return f"an array of {len(info.item_types)} " + " / ".join(
            dict.fromkeys(_plural(describe(t)) for t in info.item_types)
        )
    if isinstance(info, mi.VarTupleType | mi.ListType):
        if isinstance(info.item_type, mi.StructType):
            return "an array of tables"
        return f"an array of {_plural(describe(info.item_type))}"
    if isinstance(info, mi.DictType):
        return "a table"
    names = {
        mi.IntType: "an integer",
        mi.FloatType: "a number",
        mi.StrType: "a string",
        mi.BoolType: "true or false",
    }
    return names.get(type(info), type(info).__name__)


def _plural(text: str) -> str:
    words = text.split(" ", 1)
    if words[0] in ("a", "an") and len(words) == 2:
        return words[1] + "s"
    return text


class LineLocator:
    """Finds the line of a dotted field path ("trunks.1.name") in TOML text.

    A light scan of table headers and ``key =`` lines is enough: tomllib has already parsed
    the file, only positions are sought. The n-th ``[[name]]`` header is ``name.n`` (counting
    from 0, as the field paths do), and a ``[name.sub]`` header after it belongs to it.
    """

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_.\-\"']+)\s*=")

    def __init__(self, text: str):
        self._lines: dict[str, int] = {}
        arrays: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._HEADER.match(line)
            if header:
                name = self._in_arrays(_unquote(header.group(2).replace(" ", "")), arrays)
                if header.group(1) == "[[":
                    self._lines.setdefault(name, number)
                    arrays[name] = arrays.get(name, -1) + 1
                    name = f"{name}.{arrays[name]}"
                table = name
                self._lines.setdefault(table, number)
                continue
            key = self._KEY.match(line)
            if key:
                name = _unquote(key.group(1))
                self._lines.setdefault(f"{table}.{name}" if table else name, number)

    @staticmethod
    def _in_arrays(name: str, arrays: dict[str, int]) -> str:
        """``trunks.trust`` after the second ``[[trunks]]`` is ``trunks.1.trust``."""
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:cut])
            if head in arrays:
                return ".".join([head, str(arrays[head]), *parts[cut:]])
        return name

    def __call__(self, field: str) -> int | None:
        parts = field.split(".")
        while parts:
            line = self._lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None


def _unquote(name: str) -> str:
    return name.replace('"', "").replace("'", "")
