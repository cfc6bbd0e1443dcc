"""Dotted keys over plain mappings, as ``--set`` and the search space write them (``model.layers[0].lstm.units``):
parse, set, flatten and merge, before any validation."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import yaml

from lstmflow.errors import ConfigError


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings and lists to ``{"a.b[0].c": "value"}``."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(tree, list) and tree and any(isinstance(item, (dict, list)) for item in tree):
        out = {}
        for index, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}[{index}]"))
        return out
    return {prefix: json.dumps(tree) if isinstance(tree, (list, type(None))) else str(tree)}


def dotted_key(key: str) -> str:
    """A key without brackets, as MLflow names allow: ``model.layers[0].lstm.units`` → ``model.layers.0.lstm.units``."""
    return re.sub(r"\[(\d+)\]", r".\1", key)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``: mappings merge, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_key(key: str) -> list[str | int]:
    """``model.layers[0].lstm.units`` → ``["model", "layers", 0, "lstm", "units"]``."""
    parts: list[str | int] = []
    for match in _PATH_PART.finditer(key):
        parts.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
    if not parts or "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in parts).lstrip(".") != key:
        raise ConfigError(f"bad key {key!r}: use dotted names with [index] for lists, e.g. model.layers[0].lstm.units")
    return parts


def apply_override(tree: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``key=value`` (value parsed as YAML) to a copy of ``tree``."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"bad override {assignment!r}: expected key=value, e.g. train.epochs=5")
    origin = f"--set {assignment}"
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(
            f"{origin}: the value is not valid YAML ({problem}); quote text that holds YAML's special characters, "
            f"e.g. --set 'key=\"text\"'"
        ) from None
    return set_key(tree, key.strip(), value, origin)


def set_key(tree: dict[str, Any], key: str, value: Any, origin: str) -> dict[str, Any]:
    """A copy of ``tree`` with ``key`` (``model.layers[0].lstm.units``) set to ``value``; errors name ``origin``."""
    parts = parse_key(key)
    tree = copy.deepcopy(tree)
    node: Any = tree
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"{origin}: {key.split('[')[0]} has no item [{part}]")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{origin}: cannot index into a {type(node).__name__}")
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"{origin}: no item [{last}] to set")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"{origin}: cannot set a key on a {type(node).__name__}")
    return tree
