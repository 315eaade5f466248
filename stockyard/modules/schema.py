"""A tiny declarative schema for module options, and validation whose messages name the field.

Each module declares ``schema = {"ttl_s": Field("int", 3600, "…", min=1), …}``. The same
declaration validates the admin API and the CLI, fills in defaults, turns ``KEY=VALUE``
text from the command line into typed values, and is shown by ``GET /api/modules``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

KINDS = ("bool", "int", "float", "str", "list", "dict", "enum")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A configuration value that does not validate; ``field`` is its dotted name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Field:
    """One option: its kind, default, help text and bounds.

    ``choices`` lists the values of an ``enum``, or the allowed items of a ``list``.
    ``check`` validates the inside of a ``list`` or ``dict`` (see :func:`map_of`,
    :func:`list_of`): it returns the cleaned value or raises ValueError with a message.
    """

    kind: str
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TypeError(f"unknown field kind {self.kind!r}")

    def validate(self, name: str, value: Any) -> Any:
        """The value, cleaned, or ConfigError naming ``name``."""
        try:
            return self._validate(value)
        except ConfigError:
            raise  # from a nested schema (overrides): already names its field
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None

    def _validate(self, value: Any) -> Any:
        kind = self.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {_show(value)}")
        elif kind in ("int", "float"):
            ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok or value != value:  # bools are ints; NaN != NaN
                raise ValueError(f"must be {'a whole number' if kind == 'int' else 'a number'}, got {_show(value)}")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ValueError(f"must be {self._bounds()}, got {_show(value)}")
            value = float(value) if kind == "float" else value
        elif kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {_show(value)}")
            if self.max is not None and len(value) > self.max:
                raise ValueError(f"must be at most {int(self.max)} characters")
        elif kind == "enum":
            if value not in self.choices:
                raise ValueError(f"must be one of {', '.join(self.choices)}; got {_show(value)}")
        elif kind == "list":
            if not isinstance(value, list):
                raise ValueError(f"must be a list, got {_show(value)}")
            if self.choices:
                bad = [v for v in value if v not in self.choices]
                if bad:
                    raise ValueError(f"items must be among {', '.join(self.choices)}; got {_show(bad[0])}")
            if self.max is not None and len(value) > self.max:
                raise ValueError(f"must have at most {int(self.max)} items")
        elif kind == "dict":
            if not isinstance(value, dict):
                raise ValueError(f"must be an object, got {_show(value)}")
            if self.max is not None and len(value) > self.max:
                raise ValueError(f"must have at most {int(self.max)} entries")
        return self.check(value) if self.check is not None else value

    def _bounds(self) -> str:
        if self.min is not None and self.max is not None:
            return f"from {_num(self.min)} to {_num(self.max)}"
        if self.min is not None:
            return f"at least {_num(self.min)}"
        return f"at most {_num(self.max)}"

    def parse(self, name: str, text: str) -> Any:
        """A command-line value (``KEY=VALUE``) as this field's type, then validated."""
        kind, raw = self.kind, text.strip()
        value: Any = text
        if kind == "bool":
            low = raw.lower()
            value = True if low in _TRUE else False if low in _FALSE else text
        elif kind in ("int", "float"):
            try:
                value = int(raw) if kind == "int" else float(raw)
            except ValueError:
                pass
        elif kind in ("list", "dict"):
            if raw.startswith(("[", "{")):
                try:
                    value = json.loads(raw)
                except ValueError:
                    raise ConfigError(name, f"is not valid JSON: {raw[:60]!r}") from None
            elif kind == "list":
                value = [item.strip() for item in raw.split(",") if item.strip()]
        return self.validate(name, value)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.kind, "default": self.default, "help": self.help}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        if self.choices:
            out["choices"] = list(self.choices)
        return out


Schema = Mapping[str, Field]


def validate(module: str, schema: Schema, values: Any, *, extra: Mapping[str, Field] | None = None) -> dict:
    """Check a (partial) configuration object; every error names ``module.field``."""
    if not isinstance(values, dict):
        raise ConfigError(module, f"configuration must be a JSON object, got {_show(values)}")
    fields = {**schema, **(extra or {})}
    out = {}
    for name, value in values.items():
        field = fields.get(name)
        if field is None:
            known = ", ".join(fields) or "none"
            raise ConfigError(f"{module}.{name}", f"is not an option of {module} (options: {known})")
        out[name] = field.validate(f"{module}.{name}", value)
    return out


def defaults(schema: Schema) -> dict[str, Any]:
    return {name: _copy(field.default) for name, field in schema.items()}


def map_of(
    value_check: Callable[[str, Any], Any], *, key_check: Callable[[str], None] | None = None
) -> Callable[[dict], dict]:
    """A ``check`` for dict fields: every key a non-empty string, every value through ``value_check``."""

    def check(value: dict) -> dict:
        out = {}
        for key, item in value.items():
            if not key.strip():
                raise ValueError("keys must be non-empty strings")
            if key_check is not None:
                key_check(key)
            out[key] = value_check(key, item)
        return out

    return check


def text(where: str, value: Any) -> str:
    """A non-empty string, or ValueError saying ``where``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where} must be a non-empty string, got {_show(value)}")
    return value.strip()


def number(where: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"{where} must be a number from {_num(lo)} to {_num(hi)}, got {_show(value)}")
    return float(value)


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value)) if isinstance(value, (list, dict)) else value


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _show(value: Any) -> str:
    text_ = json.dumps(value, default=str)
    return text_ if len(text_) <= 60 else text_[:57] + "..."
