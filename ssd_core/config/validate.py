"""A plain dict -> a validated ExperimentConfig (or one section of it), or one ConfigError that names the
source file, each dotted key and what was expected (with a "did you mean" for a misspelt key).
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from ssd_core.config.experiment import ExperimentConfig
from ssd_core.config.views import config_keys
from ssd_core.errors import ConfigError


def validate_config(data: Mapping[str, Any], source: str = "<config>") -> ExperimentConfig:
    """A plain dict -> ExperimentConfig, or ConfigError naming `source` and the dotted keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    try:
        cfg = ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise _format_errors(exc, source) from None
    cfg._source = source
    return cfg


def validate_section(model: type[BaseModel], data: Mapping[str, Any], prefix: str, source: str = "<config>"):
    """One section (ModelConfig, AugmentConfig, ...) from a plain dict, or ConfigError naming the keys
    as `<prefix>.<key>`: what build_ssd and SSDAugmentation use when called without a whole config."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        err = _format_errors(exc, source)
        raise ConfigError(str(err).replace(f"{source}: ", f"{source}: {prefix}.")) from None


def _format_errors(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(key, sorted(config_keys()), n=1)
            msg = "unknown key" + (f" (did you mean {near[0]!r}?)" if near else "")
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):
            # a section check: its message starts with the field it is about ("image_size 32 ...")
            field = msg.split(" ", 1)[0].rstrip(":")
            if field.split(".", 1)[0] in err["input"]:
                key = f"{key}.{field}" if key != "<root>" else field
        elif "input" in err and err["type"] != "missing":
            msg = f"{msg} (got {short(err['input'])})"
        lines.append(f"{source}: {key}: {msg}")
    return ConfigError("invalid config: " + "; ".join(lines))


def short(value: Any, limit: int = 120) -> str:
    """`value` as text for an error message, cut to `limit` characters (a value can be huge)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 8, 8, 3
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
