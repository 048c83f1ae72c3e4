"""Reading a YAML file (a config, a sweep): `yaml.safe_load` with every failure as one ConfigError line
naming the file (and line and column), duplicate keys refused, and values that YAML aliases expand past
MAX_YAML_VALUES refused (a "billion laughs").
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import yaml

from ssd_core.config.validate import short
from ssd_core.errors import ConfigError

# YAML aliases let a small file stand for an enormous value (a "billion laughs": a list of 9 aliases of a list of
# 9 aliases of ...): configs and sweeps are refused when their values, with every alias expanded, pass this size.
MAX_YAML_VALUES = 100_000
MAX_YAML_BYTES = 10_000_000


def read_yaml(path: Union[str, os.PathLike], what: str = "config") -> Any:
    """`yaml.safe_load` of a file, or ConfigError in one line naming the file (and line and column):
    missing, not a regular file (a folder, a device, a FIFO: said which), unreadable, larger than
    MAX_YAML_BYTES, not UTF-8 text, not valid YAML, a key given twice, values that expand (YAML aliases) past
    MAX_YAML_VALUES."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} file not found")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file but {file_kind(path)} (a {what} file is a YAML file)")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes: larger than a {what} file can be "
                              f"({MAX_YAML_BYTES // 1_000_000} MB)")
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
                          ) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    expanded, written = expanded_size(data)
    if expanded > MAX_YAML_VALUES and expanded > 10 * written:  # aliases, not a long literal list
        raise ConfigError(f"{path}: its values expand (YAML aliases) to more than {MAX_YAML_VALUES:,} items: "
                          f"refused (a {what} file is small)")
    return data


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML error as one line: 'line L, column C: problem (context)'."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


class _Loader(yaml.SafeLoader):
    """safe_load's loader, refusing duplicate keys (naming the key and both lines)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"duplicate key {short(key, 60)} (first on line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def expanded_size(value: Any, limit: int = MAX_YAML_VALUES) -> tuple[int, int]:
    """(expanded, written): the number of scalars and containers `value` holds with shared (aliased) parts
    counted as often as they appear, computed without expanding them (stops counting past `limit`), and the
    number of distinct ones the file wrote."""
    memo: dict[int, int] = {}
    written = [0]

    def size(v: Any, depth: int = 0) -> int:
        if depth > 200:
            return limit + 1
        if isinstance(v, dict):
            items = list(v.keys()) + list(v.values())
        elif isinstance(v, list):
            items = v
        else:
            return 1
        key = id(v)
        if key not in memo:
            memo[key] = limit + 1  # a cycle counts as too large
            written[0] += 1 + sum(not isinstance(x, (dict, list)) for x in items)
            total = 1
            for x in items:
                total += size(x, depth + 1)
                if total > limit:
                    break
            memo[key] = total
        return memo[key]

    return size(value), written[0]


def file_kind(path: Path) -> str:
    """What a path that is not a regular file is."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return "not readable"
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"
