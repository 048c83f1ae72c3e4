"""What a config is read as: its dotted keys (config_keys), the flat MLflow params (flatten), the hash of
its result-relevant settings (config_hash), its YAML text (to_yaml), and the data root it names
(resolve_data_root).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from ssd_core.config.experiment import HASH_EXCLUDED, ExperimentConfig
from ssd_core.errors import ConfigError

DATA_ROOT_ENV = "SSDLAB_DATA_ROOT"


def _sections(model: type[BaseModel]) -> dict[str, Any]:
    """field name -> the nested section class (or None for a leaf)."""
    out = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        args = get_args(ann) if get_origin(ann) is Union else (ann,)
        nested = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        out[name] = nested[0] if nested else None
    return out


def config_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> set[str]:
    """Every valid dotted path: the leaves, plus optional sections themselves (`data.synthetic`)."""
    keys: set[str] = set()
    for name, nested in _sections(model).items():
        path = prefix + name
        if nested is None:
            keys.add(path)
        else:
            if not model.model_fields[name].is_required() and model.model_fields[name].default is None:
                keys.add(path)
            keys |= config_keys(nested, path + ".")
    return keys


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    """Dotted keys -> scalars (lists as JSON strings): the MLflow params."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, list):
            out[prefix[:-1]] = json.dumps(node)
        else:
            out[prefix[:-1]] = node

    walk(cfg.model_dump(mode="json"), "")
    return out


def config_hash(cfg: ExperimentConfig) -> str:
    """12 hex chars: sha256 of the sorted-key JSON of the resolved config minus HASH_EXCLUDED keys."""
    data = cfg.model_dump(mode="json")
    for key in HASH_EXCLUDED:
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part) or {}
        node.pop(last, None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (loadable again with load_config)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def resolve_data_root(cfg: ExperimentConfig) -> Path:
    """`data.root`, else $SSDLAB_DATA_ROOT, else `data.default_root`; relative paths from the cwd,
    then from the repository root. ConfigError when none is set."""
    raw = cfg.data.root or os.environ.get(DATA_ROOT_ENV) or cfg.data.default_root
    if not raw:
        raise ConfigError(f"{cfg.source}: data.root: not set; expected a path in the config, "
                          f"-o data.root=PATH or ${DATA_ROOT_ENV}")
    path = Path(raw).expanduser()
    if not path.is_absolute() and not path.exists():
        repo = Path(__file__).resolve().parents[2]  # ssd_core/config/views.py -> the repository
        if (repo / path).exists():
            path = repo / path
    return path
