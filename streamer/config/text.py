"""How a config is shown to people: problems by field, the effective config, the template."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from streamer.config import Settings


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem, `section.field: reason`; never the offending value (secrets)."""
    return [f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()]


def effective(settings: Settings) -> str:
    """The config in force as YAML, secrets masked."""
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)


def template() -> str:
    """Every field with its default and description, as commented YAML (configs/default.yaml)."""
    lines = ["# streamer configuration: every field, its default, and what it does.",
             "# Precedence: this file < STREAMER_SECTION__FIELD environment < --set overrides.",
             ""]  # fmt: skip
    defaults = Settings.model_construct().model_dump(mode="json")
    for section, info in Settings.model_fields.items():
        lines.append(f"{section}:")
        lines += _fields(info.annotation, defaults[section], indent=2)
        lines.append("")
    return "\n".join(lines)


def _fields(model: type[BaseModel], values: dict[str, Any], indent: int) -> list[str]:
    pad, out = " " * indent, []
    for name, info in model.model_fields.items():
        out.append(f"{pad}# {info.description}")
        value = values[name]
        nested = info.annotation if isinstance(info.annotation, type) else None
        if nested is not None and issubclass(nested, BaseModel):
            out.append(f"{pad}{name}:")
            out += _fields(nested, value, indent + 2)
        else:
            dumped = yaml.safe_dump({name: value}, default_flow_style=True, width=1000).strip()
            out.append(f"{pad}{dumped.removeprefix('{').removesuffix('}')}")
    return out
