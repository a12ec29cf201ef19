"""The means to declare the wire once: value types, rows and message kinds.

A message kind is a frozen dataclass whose fields are named, with their wire
types, in ``@kind(Op.X, field=TYPE, ...)``; its ``header()`` and ``parse()``
are generated from that declaration (as ``dataclasses`` generates
``__init__``), so the code that builds and checks a header is as direct as
one written by hand, and no kind has one of its own to drift from the other.
A row (an entry of a batch, a list on the wire) is declared the same way with
``row(name, column=TYPE, ...)``: the result builds a row from named values
and knows how to check a list of them.

A type is a check and a conversion, both Python expressions over ``v``:
``bad`` is true for a value the type refuses, ``then`` (if any) turns an
accepted value into what the message holds (and may raise ProtocolError
itself). ``send`` turns a held value (``{}``) into its wire form.

Nothing a peer sends is trusted: every key, type and range is checked, and a
refused value raises ``ProtocolError`` with a message bounded in size
(``short_repr``), never another exception.
"""
from __future__ import annotations

import dataclasses
import reprlib
from typing import Any, Callable

__all__ = ["ProtocolError", "Type", "optional", "kind", "row", "rows", "list_of", "short_repr",
           "KINDS"]


class ProtocolError(ValueError):
    """Raised when a message does not follow the wire format."""


class _ShortRepr(reprlib.Repr):
    def repr_bytes(self, value: bytes, level: int) -> str:
        if len(value) <= self.maxstring:
            return repr(value)
        return repr(value[:self.maxstring]) + "..."


_short = _ShortRepr()
_short.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr`` of a value a peer sent, bounded in depth and length.

    The builtin ``repr`` of lists nested a thousand deep (a few kilobytes of
    msgpack) raises RecursionError, and that of a megabyte string makes a
    megabyte error message; neither may come out of validating a message.
    """
    return _short.repr(value)


class Type:
    """A value on the wire: see the module docstring. ``names`` are what the
    expressions refer to besides ``v`` and builtins."""

    def __init__(self, what: str, bad: str = "False", then: str = "v", send: str = "{}",
                 names: dict | None = None, rule: str = "") -> None:
        self.what, self.bad, self.then, self.send = what, bad, then, send
        # What a refused value should have been, for the error: "an int from 0 to 9".
        self.rule = f" ({rule})" if rule else ""
        self.names = names or {}


class _Optional:
    """A key left out of the header while its value is the default (falsy)."""

    def __init__(self, wire_type: Type) -> None:
        self.type = wire_type


def optional(wire_type: Type) -> _Optional:
    return _Optional(wire_type)


_MISSING = object()
_counter = iter(range(1 << 30))


def _compile(source: str, names: dict, name: str) -> Callable:
    namespace = {"ProtocolError": ProtocolError, "short_repr": short_repr, "_MISSING": _MISSING,
                 **names}
    exec(compile(source, f"<zeropool.protocol wire: {name}>", "exec"), namespace)
    return namespace[name]


def _check(wire_type: Type, target: str, error: str, names: dict, indent: str) -> list[str]:
    """Lines that check ``v`` against ``wire_type`` and store it in ``target``."""
    key = f"_t{next(_counter)}"
    names.update(wire_type.names)
    lines = []
    if wire_type.bad != "False":
        names[key] = error
        lines += [f"{indent}if {wire_type.bad}:",
                  f"{indent}    raise ProtocolError({key} + short_repr(v))"]
    if target != wire_type.then:  # no `v = v` per value checked
        lines.append(f"{indent}{target} = {wire_type.then}")
    return lines


def list_of(item: Type, what: str, most: int | None = None) -> Type:
    """A list of ``item`` values (at most ``most``)."""
    names: dict = {}
    lines = ["def check(values, key):",
             "    if type(values) is not list:",
             "        raise ProtocolError(f'{key!r} has type {type(values).__name__}')"]
    if most is not None:
        lines += [f"    if len(values) > {most}:",
                  f"        raise ProtocolError(f'{{key!r}} holds more than {most} entries')"]
    converts = item.then != "v"
    lines.append("    for i, v in enumerate(values):" if converts else "    for v in values:")
    lines += _check(item, "values[i]" if converts else "v", f"bad {item.what}{item.rule}: ", names, " " * 8)
    lines.append("    return values")
    check = _compile("\n".join(lines), names, "check")
    name = f"_list{next(_counter)}"
    return Type(what, then=f"{name}(v, key)", names={name: check})


def row(name: str, *, extra: Callable | None = None, extra_columns: tuple[str, ...] = (),
        **columns: Type | _Optional) -> Callable[..., list]:
    """Declare a row layout. The result, called with the columns' values,
    builds a row (a list; ``optional`` columns come last and are left off
    while None); its ``check(rows, key)`` parses a list of such rows in place,
    with ``extra(*extra_columns)`` checking what spans columns; and each
    column's index is an attribute of it (``SubmitRow.nframes``)."""
    required = [c for c, t in columns.items() if not isinstance(t, _Optional)]
    later = [c for c in columns if c not in required]
    lines = [f"def {name}({', '.join(required + [f'{c}=None' for c in later])}):",
             f"    row = [{', '.join(required)}]"]
    for column in later:
        lines += [f"    if {column} is not None:", f"        row.append({column})"]
    lines.append("    return row")
    make = _compile("\n".join(lines), {}, name)
    make.columns = tuple(columns)
    for index, column in enumerate(columns):
        setattr(make, column, index)
    make.check = _row_checker(name, columns, len(required), extra, extra_columns)
    return make


def _row_checker(name: str, columns: dict, width: int, extra: Callable | None,
                 extra_columns: tuple[str, ...]) -> Callable:
    names: dict = {"_extra": extra}
    most = len(columns)
    size = width if most == width else f"{width} to {most}"
    lines = ["def check(rows, key):",
             "    if type(rows) is not list:",
             "        raise ProtocolError(f'{key!r} has type {type(rows).__name__}')",
             "    for row in rows:",
             f"        if type(row) is not list or not {width} <= len(row) <= {most}:",
             f"            raise ProtocolError(f'{{key!r}} entries must be lists of {size}')"]
    for index, (column, wire_type) in enumerate(columns.items()):
        indent = " " * 8
        if isinstance(wire_type, _Optional):
            wire_type = wire_type.type
            lines.append(f"        if len(row) > {index}:")
            indent = " " * 12
        converts = wire_type.then != "v"
        lines.append(f"{indent}v = row[{index}]")
        lines += _check(wire_type, f"row[{index}]" if converts else "v",
                        f"bad {wire_type.what} in a {name}{wire_type.rule}: ", names, indent)
    if extra is not None:
        order = list(columns)
        lines.append(f"        _extra({', '.join(f'row[{order.index(c)}]' for c in extra_columns)})")
    lines.append("    return rows")
    return _compile("\n".join(lines), names, "check")


def rows(layout: Callable, what: str) -> Type:
    """A list of ``layout`` rows."""
    name = f"_rows{next(_counter)}"
    return Type(what, then=f"{name}(v, key)", names={name: layout.check})


# Every kind by its op, for ``frames.decode``; RESULTS has two (a worker's and
# a client's), each kept under ``(op, side)``.
KINDS: dict[Any, type] = {}


def kind(op: Any, *, side: Any = None, **fields: Type | _Optional) -> Callable[[type], type]:
    """Declare a message kind: ``fields`` name the dataclass's fields in order,
    with their wire types; ``header()`` and ``_parse()`` follow from them.
    A kind may define its own ``parse`` that ends in ``cls._parse(header)``."""

    def declare(cls: type) -> type:
        declared = [f.name for f in dataclasses.fields(cls)]
        if declared != list(fields):
            raise TypeError(f"{cls.__name__}: wire fields {list(fields)} are not the "
                            f"dataclass's fields {declared}")
        cls.op = op
        cls.header = _header(op, fields)
        cls._parse = classmethod(_parser(cls, fields))
        if "parse" not in cls.__dict__:
            cls.parse = cls._parse
        KINDS[op if side is None else (op, side)] = cls
        return cls

    return declare


def _header(op: Any, fields: dict) -> Callable:
    names: dict = {}
    items, later = [f'"op": "{op.value}"'], []
    for name, wire_type in fields.items():
        if isinstance(wire_type, _Optional):
            later.append((name, wire_type.type))
        else:
            names.update(wire_type.names)
            items.append(f'"{name}": ' + wire_type.send.format(f"self.{name}"))
    lines = ["def header(self):", f"    header = {{{', '.join(items)}}}"]
    for name, wire_type in later:
        names.update(wire_type.names)
        lines += [f"    if self.{name}:",
                  f'        header["{name}"] = ' + wire_type.send.format(f"self.{name}")]
    lines.append("    return header")
    return _compile("\n".join(lines), names, "header")


def _parser(cls: type, fields: dict) -> Callable:
    names: dict = {}
    lines = ["def parse(cls, header):"]
    defaults = {f.name: f for f in dataclasses.fields(cls)}
    for name, wire_type in fields.items():
        lines.append(f'    key = "{name}"')
        lines.append("    v = header.get(key, _MISSING)")
        if isinstance(wire_type, _Optional):
            wire_type = wire_type.type
            default = defaults[name]
            fallback = (f"_default_{name}()" if default.default_factory is not dataclasses.MISSING
                        else f"_default_{name}")
            names[f"_default_{name}"] = (default.default_factory
                                         if default.default_factory is not dataclasses.MISSING
                                         else default.default)
            lines += ["    if v is _MISSING:", f"        {name} = {fallback}", "    else:"]
            indent = " " * 8
        else:
            lines += ["    if v is _MISSING:",
                      f"        raise ProtocolError(\"missing key '{name}'\")"]
            indent = " " * 4
        lines += _check(wire_type, name, f"bad {name!r}{wire_type.rule or f' ({wire_type.what})'}: ", names, indent)
    lines.append(f"    return cls({', '.join(fields)})")
    return _compile("\n".join(lines), names, "parse")
