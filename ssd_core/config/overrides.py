"""Loading a config: the YAML file, then the overrides, then validation.

The override grammar (`ssdlab ... -o key=value`, sweeps, `apply_overrides`): `dotted.key=value` with the
value read as YAML (`train.lr=0.01`, `data.class_names=[a, b]`, `data.synthetic=null`; `1e-3` is a number),
or `@FILE`: a YAML mapping of dotted keys or of nested sections (a search's best_hyperparameters.yaml).
An unknown key is refused with the nearest valid one.
"""
from __future__ import annotations

import copy
import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import yaml

from ssd_core.config.experiment import ExperimentConfig
from ssd_core.config.validate import validate_config
from ssd_core.config.views import config_keys
from ssd_core.config.yaml_io import _Loader, read_yaml, yaml_error_line
from ssd_core.errors import ConfigError


def load_config(path: Union[str, os.PathLike], overrides: Union[Iterable[str], Mapping[str, Any]] = ()
                ) -> ExperimentConfig:
    """Read a YAML config, apply `overrides` ("a.b=1" strings or a {dotted: value} dict), validate."""
    path = Path(path)
    data = read_yaml(path, "config") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    if "experiment" in data and {"arms", "search", "design", "seeds"} & set(data):
        raise ConfigError(f"{path}: this is a sweep file, not an experiment config: `ssdlab sweep {path} --dry-run` "
                          f"shows its plan")
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides, source=str(path))
    data = _set_paths(data, overrides, str(path))
    return validate_config(data, str(path))


# YAML 1.1 reads "1e-3" (no dot) as a string; overrides read it as the number a user means.
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_overrides(items: Iterable[str], source: str = "<overrides>") -> dict[str, Any]:
    """["train.lr=0.01", "data.class_names=[a, b]"] -> {"train.lr": 0.01, ...}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if str(item).startswith("@"):  # -o @best_hyperparameters.yaml
            out.update(_override_file(str(item)[1:], source))
            continue
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: override {item!r}: expected key=value, e.g. train.lr=0.01")
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
            out[key] = float(value) if isinstance(value, str) and _FLOAT.fullmatch(value) else value
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: override {key}: value {raw!r} is not valid YAML: "
                              f"{yaml_error_line(exc)}") from None
    return out


def _override_file(path: str, source: str) -> dict[str, Any]:
    """`-o @FILE`: a YAML mapping of dotted keys (a search's best_hyperparameters.yaml) or of nested sections."""
    p = Path(path).expanduser()
    try:
        data = yaml.load(p.read_text(), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"{source}: override file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: override file {path}: not valid YAML: {yaml_error_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys (train.lr: 0.01), got {type(data).__name__}")
    out: dict[str, Any] = {}
    keys = config_keys()

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict) and f"{prefix}{k}" not in keys:
                walk(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
    walk(data, "")
    return out


def apply_overrides(cfg: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """A new, validated config with the {dotted.key: value} overrides applied."""
    source = cfg.source
    data = _set_paths(cfg.model_dump(mode="json"), overrides, source)
    return validate_config(data, source)


def _set_paths(data: dict, overrides: Mapping[str, Any], source: str) -> dict:
    data = copy.deepcopy(data)
    valid = config_keys()
    for key, value in overrides.items():
        if key not in valid:
            near = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{source}: override {key}: unknown key{hint}")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}  # e.g. data.synthetic.images while data.synthetic is null
            node = node[part]
        node[parts[-1]] = value
    return data
