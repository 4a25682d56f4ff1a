"""How a config is shown to people: problems by field, the effective config, the template."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from streamer.config import Settings

SECRET_WORDS = ("password", "secret", "token", "credential")


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per problem, `section.field: reason (got value)`; an unknown key with the
    nearest known one. A secret's value, or a whole mapping, is never echoed."""
    return [_describe(e["loc"], e["type"], e["msg"], e.get("input")) for e in exc.errors()]


def _describe(loc: tuple, kind: str, message: str, value: object) -> str:
    where = ".".join(str(p) for p in loc) or "config"
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        return f"{where}: unknown key{did_you_mean(str(loc[-1]), known)}"
    secret = any(word in str(part).lower() for part in loc for word in SECRET_WORDS)
    if secret or isinstance(value, dict | list | tuple) or value is None:
        return f"{where}: {message}"
    shown = repr(value)
    return f"{where}: {message} (got {shown[:80]}{'...' if len(shown) > 80 else ''})"


def did_you_mean(word: str, known: list[str]) -> str:
    """` (did you mean 'x'?)`, or nothing when no known word is close."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_keys(loc: tuple) -> list[str]:
    """The fields of the section at `loc` (Settings at the top), or none if it is not one."""
    model: Any = Settings
    for part in loc:
        info = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        model = info.annotation if info is not None else None
    return list(model.model_fields) if isinstance(model, type) and issubclass(
        model, BaseModel) else []  # fmt: skip


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
