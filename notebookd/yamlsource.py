"""Read YAML into plain values that remember their line, for one-line config errors."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(Exception):
    """A config problem, rendered as ``file:line: key.path: message`` on one line."""

    def __init__(self, file: str, line: int | None, path: str, message: str):
        self.file, self.line, self.path, self.message = file, line, path, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        # one line, whatever a key or value held
        return text.replace("\r", "\\r").replace("\n", "\\n")


@dataclass(frozen=True)
class Located:
    """A YAML value (scalar, ``dict[str, Located]`` or ``list[Located]``) and where it stands."""

    value: Any
    line: int
    path: str
    file: str

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.file, self.line, self.path, message)


def parse(text: str, file: str) -> Located:
    """Parse YAML text; syntax errors become a ConfigError with the line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(file, mark.line + 1 if mark else None, "", f"YAML syntax error: {_problem(exc)}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        raise ConfigError(file, line, "", f"YAML error: character {exc.character!r} is not allowed") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, "", f"YAML error: {' '.join(str(exc).split())}") from None
    if node is None:
        return Located({}, 1, "", file)
    return _convert(node, "", file, yaml.constructor.SafeConstructor(), budget=[MAX_VALUES])


# Aliases repeat a subtree without repeating its text: a few lines (`a: &a [x, x]`, `b: &b [*a, *a]` …)
# can stand for billions of values. The file is read as a whole tree, so bound the whole tree.
MAX_VALUES = 100_000


def _convert(node: yaml.Node, path: str, file: str, scalars: yaml.constructor.SafeConstructor,
             parents: tuple[int, ...] = (), budget: list | None = None) -> Located:
    line = node.start_mark.line + 1
    if id(node) in parents or len(parents) > 64:
        raise ConfigError(file, line, path, "nested too deep (a recursive alias?)")
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(file, line, path, f"more than {MAX_VALUES} values (aliases expanding without limit?)")
    parents += (id(node),)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Located] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(file, key_node.start_mark.line + 1, path, "keys must be plain names")
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            if key in out:
                raise ConfigError(file, key_node.start_mark.line + 1, child,
                                  f"given twice (first on line {out[key].line})")
            value = _convert(value_node, child, file, scalars, parents, budget)
            # a block mapping or list starts on the line after its key: errors point at the key
            out[key] = replace(value, line=key_node.start_mark.line + 1)
        return Located(out, line, path, file)
    if isinstance(node, yaml.SequenceNode):
        items = [_convert(n, f"{path}[{i}]", file, scalars, parents, budget) for i, n in enumerate(node.value)]
        return Located(items, line, path, file)
    try:
        value = scalars.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(file, line, path, f"bad value: {_problem(exc)}") from None
    except (yaml.YAMLError, ValueError, AttributeError, KeyError, TypeError) as exc:
        # PyYAML's constructors fail in these ways on values that do not fit an explicit tag
        raise ConfigError(file, line, path, f"bad value for tag {node.tag}: {type(exc).__name__}") from None
    return Located(value, line, path, file)


def _problem(exc: yaml.MarkedYAMLError) -> str:
    return " ".join(" ".join(filter(None, [exc.context, exc.problem])).split())
