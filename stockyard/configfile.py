"""Configuration as code: one TOML file for what an operator configures, kept in git.

The file declares four sections, each the whole truth for what it names:

- ``[providers.NAME]`` — database providers: ``kind``, ``base_url``, ``models``, ``api_version``,
  ``responses``, and ``api_key_env``, the *name* of an environment variable whose value becomes
  the provider's key (stored encrypted). Without ``api_key_env`` the key stays as the vault has
  it. A key is never written in the file. Providers from the environment are not part of it.
- ``[modules.NAME]`` — ``enabled`` and the options under ``[modules.NAME.config]``; a module
  the file does not name goes back to its defaults.
- ``[prices."MODEL"]`` — price overrides in USD per 1M tokens as decimal text.
- ``[projects.NAME]`` — project budgets: ``budget_usd`` (decimal text) and ``period``.
- ``[models.NAME]`` — models served by deployments: ``strategy``, ``fallbacks``,
  ``context_fallback``, and ``[[models.NAME.deployments]]`` with ``name``, ``provider``,
  ``model``, ``weight``, ``priority``, ``rpm``, ``tpm`` and ``key_env`` (the variable holding
  the deployment's own key; without it an own key stays as the vault has it).

:func:`read` validates a file with the same checks as the CLI and the admin API and reports
a problem with the file, line and field. :func:`plan` compares it with the database;
:func:`apply` makes the changes in one transaction (all or nothing), each one audited, so a
running server reloads once. :func:`export` writes the database's configuration as such a file.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import modules as registry
from .errors import ProxyError
from .operations import Operations, Refused, invalid
from .operations import keys as key_ops
from .operations import models as model_ops
from .operations import modules as module_ops
from .operations import prices as price_ops
from .operations import providers as provider_ops
from .pricing import Price, format_usd
from .store.db import put_meta

SECTIONS = ("providers", "modules", "prices", "projects", "models")
MODEL_FIELDS = ("strategy", "fallbacks", "context_fallback", "deployments")
DEPLOYMENT_FIELDS = ("name", "provider", "model", "weight", "priority", "rpm", "tpm", "key_env")
PROVIDER_FIELDS = ("kind", "base_url", "models", "api_version", "responses", "api_key_env")
MODULE_FIELDS = ("enabled", "config")
PROJECT_FIELDS = ("budget_usd", "period")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_FILE_BYTES = 1024 * 1024


class ConfigFileError(Exception):
    """A file that cannot be applied: says where (file, line) and which field."""

    def __init__(self, path: str, line: int | None, field_path: str | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {field_path + ': ' if field_path else ''}{message}")


@dataclass
class Desired:
    """A configuration, normalised so that two of them compare field by field."""

    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, Price] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployments keyed by their name
    key_env: dict[str, str] = field(default_factory=dict)  # provider (or "model/deployment") → variable name


@dataclass(frozen=True)
class Change:
    section: str
    name: str
    action: str  # add, change, remove, set key
    detail: str

    def line(self) -> str:
        sign = {"add": "+", "remove": "-"}.get(self.action, "~")
        return f"{sign} {self.section}.{self.name}: {self.action}{' — ' + self.detail if self.detail else ''}"


# -- reading a file -------------------------------------------------------------------------


def read(path: str | Path) -> Desired:
    """Parse and validate a configuration file (ConfigFileError with the line and field)."""
    name = str(path)
    try:
        raw = _read_capped(Path(path))
    except OSError as exc:
        raise ConfigFileError(name, None, None, f"cannot read the file: {exc.strerror or exc}") from None
    if raw is None:
        raise ConfigFileError(name, None, None, "not a regular file (a pipe, a device or a folder is never read)")
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigFileError(name, None, None, f"the file is over {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigFileError(name, None, None, "the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_from_message(str(exc))
        raise ConfigFileError(name, line, None, f"not valid TOML: {exc}") from None
    return _validate(data, _Locator(name, text))


def _read_capped(path: Path) -> bytes | None:
    """The file's bytes, at most one past the size limit; None when it is not a regular file
    (after symlinks): a named pipe would keep the reader waiting, ``/dev/zero`` never ends."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe opens without waiting for a writer
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return file.read(MAX_FILE_BYTES + 1)


def _line_from_message(message: str) -> int | None:
    found = re.search(r"line (\d+)", message)
    return int(found.group(1)) if found else None


class _Locator:
    """Finds the line of a table or of a field in it, for error messages (tomllib gives none)."""

    _HEADER = re.compile(r"^\s*\[\[?\s*(.+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines = text.splitlines()
        self.headers: list[tuple[tuple[str, ...], int]] = []
        for number, line in enumerate(self.lines, 1):
            match = self._HEADER.match(line)
            if match:
                self.headers.append((_split_key(match.group(1)), number))

    def line_of(self, table: tuple[str, ...], key: str | None = None) -> int | None:
        for header, number in self.headers:
            if header != table:
                continue
            if key is None:
                return number
            pattern = re.compile(rf'^\s*("{re.escape(key)}"|{re.escape(key)})\s*[=.]')
            for offset, line in enumerate(self.lines[number:], number + 1):
                if self._HEADER.match(line):
                    break
                if pattern.match(line):
                    return offset
            return number
        for header, number in self.headers:  # only its sub-tables have headers ([keys.k])
            if header[: len(table)] == table:
                return number
        if len(table) > 1:  # a dotted key inside the parent table ("providers.x.kind = …")
            return self.line_of(table[:-1])
        return None

    def error(self, table: tuple[str, ...], key: str | None, message: str) -> ConfigFileError:
        return ConfigFileError(
            self.name, self.line_of(table, key), ".".join((*table, *([key] if key else []))), message
        )


def _split_key(text: str) -> tuple[str, ...]:
    parts, current, quote = [], "", ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return tuple(parts)


def _validate(data: dict[str, Any], loc: _Locator) -> Desired:
    out = Desired()
    for section, value in data.items():
        if section not in SECTIONS:
            raise loc.error((section,), None, f"unknown section; the sections are {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise loc.error((section,), None, "must be a table")
    for name, table in data.get("providers", {}).items():
        _provider(out, loc, name, table)
    for name, table in data.get("modules", {}).items():
        _module(out, loc, name, table)
    for model, table in data.get("prices", {}).items():
        where = ("prices", model)
        try:
            key = price_ops.check_model(model)
            if not isinstance(table, dict):
                raise invalid('must be a table of rates, e.g. input = "0.15"')
            out.prices[key] = price_ops.parse_rates(table)
        except Refused as exc:
            raise loc.error(where, exc.param, exc.message) from None
    for project, table in data.get("projects", {}).items():
        where = ("projects", project)
        _only(loc, where, table, PROJECT_FIELDS)
        try:
            name = key_ops.check_name(project, "project")
            amount = key_ops.check_budget_usd(table.get("budget_usd"))
            if amount is None:
                raise invalid('budget_usd is required, e.g. budget_usd = "50.00"', "budget_usd")
            out.projects[name] = {"budget_uc": amount, "period": key_ops.check_period(table.get("period"), "period")}
        except Refused as exc:
            raise loc.error(where, exc.param, exc.message) from None
    for name, table in data.get("models", {}).items():
        _model(out, loc, name, table)
    claimed = {name: provider["models"] for name, provider in out.providers.items()}
    for model, field_name, problem in model_ops.dangling(out.models, claimed, os.environ):
        at = ("models", model) if field_name != "provider" else ("models", model, "deployments")
        raise loc.error(at, field_name, problem)
    return out


def _model(out: Desired, loc: _Locator, name: str, table: Any) -> None:
    where = ("models", name)
    _only(loc, where, table, MODEL_FIELDS)
    try:
        checked = model_ops.check_model_name(name)
        model: dict[str, Any] = {
            "strategy": model_ops.check_strategy(table.get("strategy", "weighted")),
            "fallbacks": list(model_ops.check_fallbacks(table.get("fallbacks"))),
            "context_fallback": model_ops.check_context_fallback(table.get("context_fallback")),
            "deployments": {},
        }
    except Refused as exc:
        raise loc.error(where, exc.param if exc.param in MODEL_FIELDS else None, exc.message) from None
    listed = table.get("deployments", [])
    if not isinstance(listed, list):
        raise loc.error(where, "deployments", "must be an array of tables: [[models.NAME.deployments]]")
    for item in listed:
        at = (*where, "deployments")
        if isinstance(item, dict) and "api_key" in item:
            raise loc.error(at, "api_key", "keys are never written in the file: use key_env")
        _only(loc, at, item, DEPLOYMENT_FIELDS)
        try:
            dep = model_ops.check_deployment_name(item.get("name", item.get("provider")))
            fields = model_ops.deployment_fields({k: v for k, v in item.items() if k not in ("name", "key_env")})
            if "provider" not in fields or "upstream_model" not in fields:
                raise invalid("provider and model are required", "provider" if "provider" not in fields else "model")
        except Refused as exc:
            raise loc.error(at, exc.param if exc.param in DEPLOYMENT_FIELDS else None, exc.message) from None
        if dep in model["deployments"]:
            raise loc.error(at, "name", f"two deployments named {dep!r}")
        model["deployments"][dep] = {
            "provider": fields["provider"],
            "model": fields["upstream_model"],
            "weight": fields.get("weight", 1),
            "priority": fields.get("priority", 0),
            "rpm": fields.get("rpm"),
            "tpm": fields.get("tpm"),
        }
        var = item.get("key_env")
        if var is not None:
            if not isinstance(var, str) or not ENV_NAME.match(var):
                raise loc.error(at, "key_env", "must be the name of an environment variable, e.g. OPENAI_ORG2_KEY")
            out.key_env[f"{checked}/{dep}"] = var
    out.models[checked] = model


def _only(loc: _Locator, where: tuple[str, ...], table: Any, fields: tuple[str, ...]) -> None:
    if not isinstance(table, dict):
        raise loc.error(where, None, "must be a table")
    for key in table:
        if key not in fields:
            raise loc.error(where, key, f"unknown field; the fields are {', '.join(fields)}")


def _provider(out: Desired, loc: _Locator, name: str, table: Any) -> None:
    where = ("providers", name)
    if isinstance(table, dict) and "api_key" in table:
        raise loc.error(where, "api_key", "keys are never written in the file: use api_key_env")
    _only(loc, where, table, PROVIDER_FIELDS)
    try:
        checked = provider_ops.check_name(name)
        kind = provider_ops.check_kind(table.get("kind"))
        out.providers[checked] = {
            "kind": kind,
            "base_url": provider_ops.check_base_url(table.get("base_url"), kind),
            "models": list(provider_ops.check_models(table.get("models"), kind)),
            "api_version": provider_ops.check_api_version(table.get("api_version"), kind),
            "responses": provider_ops.check_responses(table.get("responses", False)),
        }
    except Refused as exc:
        raise loc.error(where, exc.param if exc.param in PROVIDER_FIELDS else None, exc.message) from None
    env_name = table.get("api_key_env")
    if env_name is not None:
        if not isinstance(env_name, str) or not ENV_NAME.match(env_name):
            raise loc.error(where, "api_key_env", "must be the name of an environment variable, e.g. OPENAI_ORG2_KEY")
        out.key_env[checked] = env_name


def _module(out: Desired, loc: _Locator, name: str, table: Any) -> None:
    where = ("modules", name)
    _only(loc, where, table, MODULE_FIELDS)
    try:
        cls = registry.find(name)
    except ProxyError as exc:
        raise loc.error(where, None, exc.message) from None
    enabled = table.get("enabled", registry.default_enabled(cls))
    if not isinstance(enabled, bool):
        raise loc.error(where, "enabled", "must be true or false")
    config = table.get("config", {})
    try:
        cleaned = module_ops.checked(cls, config)
    except Refused as exc:
        field_name = (exc.param or "").removeprefix(f"{name}.") or None
        raise loc.error((*where, "config"), field_name, exc.message) from None
    out.modules[name] = {"enabled": enabled, "config": cleaned}


# -- the database's configuration -----------------------------------------------------------


def current(conn: sqlite3.Connection) -> Desired:
    """What the database holds now, in the same normal form as a file (keys left out)."""
    out = Desired()
    for r in conn.execute("SELECT name, kind, base_url, models, api_version, responses FROM providers ORDER BY id"):
        try:
            models = list(json.loads(r["models"]))
        except (TypeError, ValueError):
            models = []
        out.providers[r["name"]] = {
            "kind": r["kind"],
            "base_url": r["base_url"],
            "models": models,
            "api_version": r["api_version"],
            "responses": bool(r["responses"]),
        }
    rows = module_ops.load_rows(conn)
    for cls in registry.ORDER:
        row = rows.get(cls.name)
        stored = row.config if row is not None and isinstance(row.config, dict) else {}
        enabled = row.enabled if row is not None else registry.default_enabled(cls)
        out.modules[cls.name] = {"enabled": enabled, "config": stored}
    out.prices = price_ops.load_overrides(conn)
    budgets = conn.execute("SELECT project, budget_uc, period FROM project_budgets").fetchall()
    for r in sorted(budgets, key=lambda r: r["project"]):  # byte order on both stores (list_projects)
        out.projects[r["project"]] = {"budget_uc": r["budget_uc"], "period": r["period"]}
    for m in model_ops.rows(conn):
        out.models[m["name"]] = {
            "strategy": m["strategy"],
            "fallbacks": m["fallbacks"],
            "context_fallback": m["context_fallback"],
            "deployments": {
                d["name"]: {k: d[k] for k in ("provider", "model", "weight", "priority", "rpm", "tpm")}
                for d in m["deployments"]
            },
        }
    return out


def _with_module_defaults(desired: Desired) -> dict[str, dict[str, Any]]:
    """Every module: as the file says, or its defaults when the file does not name it."""
    return {
        cls.name: desired.modules.get(cls.name, {"enabled": registry.default_enabled(cls), "config": {}})
        for cls in registry.ORDER
    }


# -- plan and apply -------------------------------------------------------------------------


def plan(
    now: Desired, desired: Desired, env: Mapping[str, str], stored_keys: Mapping[str, str | None] | None = None
) -> list[Change]:
    """What applying ``desired`` would change, in the order it is applied.

    ``stored_keys`` are the providers' decrypted keys (to tell whether an ``api_key_env``
    changes one); a variable that is not set is a ConfigFileError-worthy problem for the caller.
    """
    stored_keys = stored_keys or {}
    changes: list[Change] = []
    for name, fields in desired.providers.items():
        before = now.providers.get(name)
        if before is None:
            changes.append(Change("providers", name, "add", _describe(fields)))
        elif before != fields:
            diff = {k: v for k, v in fields.items() if before.get(k) != v}
            changes.append(Change("providers", name, "change", _describe(diff)))
        var = desired.key_env.get(name)
        if var is not None and env.get(var) != stored_keys.get(name):
            changes.append(Change("providers", name, "set key", f"from ${var}"))
    changes += [Change("providers", name, "remove", "") for name in now.providers if name not in desired.providers]
    for name, fields in _with_module_defaults(desired).items():
        if now.modules.get(name) != fields:
            changes.append(Change("modules", name, "change", _describe(fields)))
    changes += _whole_entries("prices", now.prices, desired.prices, _rates)
    changes += _whole_entries("projects", now.projects, desired.projects, _budget)
    for name, spec in desired.models.items():
        before = now.models.get(name)
        head = {k: v for k, v in spec.items() if k != "deployments"}
        if before is None:
            changes.append(Change("models", name, "add", _describe(head)))
        elif {k: v for k, v in before.items() if k != "deployments"} != head:
            changes.append(Change("models", name, "change", _describe(head)))
        had = before["deployments"] if before is not None else {}
        for dep, fields in spec["deployments"].items():
            target = f"{name}/{dep}"
            if dep not in had:
                changes.append(Change("models", target, "add", _describe(fields)))
                continue
            if had[dep] != fields:
                changes.append(Change("models", target, "change", _describe(fields)))
            var = desired.key_env.get(target)
            if var is not None and env.get(var) != stored_keys.get(target):
                changes.append(Change("models", target, "set key", f"from ${var}"))
        changes += [Change("models", f"{name}/{dep}", "remove", "") for dep in had if dep not in spec["deployments"]]
    changes += [Change("models", name, "remove", "") for name in now.models if name not in desired.models]
    return changes


def _whole_entries(
    section: str, now: Mapping[str, Any], desired: Mapping[str, Any], shown: Callable[[Any], Mapping[str, Any]]
) -> list[Change]:
    """Add, change and remove lines for a section whose entries compare whole (prices, budgets),
    removals in the database's order so a plan reads the same every time."""
    changes = [
        Change(section, name, "change" if name in now else "add", _describe(shown(value)))
        for name, value in desired.items()
        if now.get(name) != value
    ]
    return changes + [Change(section, name, "remove", "") for name in now if name not in desired]


def missing_variables(desired: Desired, env: Mapping[str, str]) -> list[str]:
    return sorted({var for var in desired.key_env.values() if not env.get(var)})


KEY_ENV_META = "config_key_env"  # meta row: provider → the variable its key came from (for export)


def key_env(conn: sqlite3.Connection) -> dict[str, str]:
    """Which environment variable each provider's key was applied from (names only, never values)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_ENV_META,)).fetchone()
    try:
        found = json.loads(row[0]) if row else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def apply(ops: Operations, desired: Desired, changes: list[Change], env: Mapping[str, str], source: str) -> None:
    """Make ``changes`` in one transaction, each audited, plus one ``config.apply`` entry."""

    def remember_key_env(conn: sqlite3.Connection) -> None:
        put_meta(conn, KEY_ENV_META, json.dumps(desired.key_env, sort_keys=True))

    with ops.batch():
        for change in changes:
            _apply_one(ops, desired, change, env)
        details = {"file": source, "changes": [c.line() for c in changes]}
        ops.change("config.apply", "config", details, remember_key_env)


def _apply_one(ops: Operations, desired: Desired, change: Change, env: Mapping[str, str]) -> None:
    name = change.name
    if change.section == "providers":
        fields = desired.providers.get(name, {})
        if change.action == "add":
            provider_ops.add(ops, name, **{k: v for k, v in fields.items() if k != "kind"}, kind=fields["kind"])
        elif change.action == "change":
            provider_ops.update(ops, name, **fields)
        elif change.action == "set key":
            provider_ops.update(ops, name, api_key=env[desired.key_env[name]])
        else:
            provider_ops.remove(ops, name)
    elif change.section == "modules":
        fields = _with_module_defaults(desired)[name]
        module_ops.configure(ops, name, fields["config"], replace=True, enabled=fields["enabled"])
    elif change.section == "models":
        _apply_model(ops, desired, change, env)
    elif change.section == "prices":
        if change.action == "remove":
            price_ops.unset_price(ops, name)
        else:
            price_ops.set_price(ops, name, _rates(desired.prices[name]))
    elif change.action == "remove":
        key_ops.clear_project_budget(ops, name)
    else:
        budget = desired.projects[name]
        key_ops.set_project_budget(ops, name, format_usd(budget["budget_uc"], 2)[1:], budget["period"])


def _apply_model(ops: Operations, desired: Desired, change: Change, env: Mapping[str, str]) -> None:
    model, _, dep = change.name.partition("/")
    if not dep:
        head = {k: v for k, v in desired.models.get(model, {}).items() if k != "deployments"}
        if change.action == "add":
            model_ops.add_model(ops, model, **head)
        elif change.action == "change":
            model_ops.update_model(ops, model, **head)
        else:
            model_ops.remove_model(ops, model)
        return
    var = desired.key_env.get(change.name)
    if change.action == "remove":
        model_ops.remove_deployment(ops, model, dep)
    elif change.action == "set key":
        model_ops.update_deployment(ops, model, dep, {"api_key": env[var or ""]})
    else:
        fields = dict(desired.models[model]["deployments"][dep])
        if change.action == "add":
            key = {"api_key": env[var]} if var is not None else {}
            model_ops.add_deployment(ops, model, {"name": dep, **fields, **key})
        else:
            model_ops.update_deployment(ops, model, dep, fields)


def _rates(price: Price) -> dict[str, str]:
    """A price as the file writes it: decimal USD per 1M (of its unit), and the unit when not tokens."""
    rates = {
        "input": price.input,
        "cached_input": price.cached_input,
        "cache_write": price.cache_write,
        "output": price.output,
        "reasoning": price.reasoning,
        "media_input": price.media_input,
        "media_output": price.media_output,
    }
    out = {k: format_usd(v, 2).removeprefix("$") for k, v in rates.items() if v is not None}
    if price.unit != "token":
        out["unit"] = price.unit
    return out


def _budget(budget: dict[str, Any]) -> dict[str, str]:
    return {"budget_usd": format_usd(budget["budget_uc"], 2).removeprefix("$"), "period": budget["period"]}


def _describe(fields: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in fields.items())


# -- export ---------------------------------------------------------------------------------


def export(state: Desired, key_env: Mapping[str, str] | None = None) -> str:
    """The configuration as a TOML file (no secrets: keys stay in the vault)."""
    key_env = key_env or {}
    out = [
        "# Stockyard configuration (stockyard config export). Apply with `stockyard config apply FILE`.",
        '# Provider keys are not in this file: set api_key_env = "VAR" to take a key from the',
        "# environment, or leave it out to keep the key stored in the vault.",
    ]
    for name, fields in state.providers.items():
        table = {k: v for k, v in fields.items() if v is not None and not (k == "responses" and v is False)}
        if name in key_env:
            table["api_key_env"] = key_env[name]
        out += ["", f"[providers.{_key(name)}]", *_pairs(table)]
    for name, fields in state.modules.items():
        out += ["", f"[modules.{_key(name)}]", f"enabled = {_value(fields['enabled'])}"]
        if fields["config"]:
            out += _table(("modules", name, "config"), fields["config"])
    for model, price in state.prices.items():
        out += ["", f"[prices.{_key(model)}]", *_pairs(_rates(price))]
    for project, budget in state.projects.items():
        out += ["", f"[projects.{_key(project)}]", *_pairs(_budget(budget))]
    for name, spec in state.models.items():
        head = {k: v for k, v in spec.items() if k != "deployments" and not (k == "fallbacks" and not v)}
        out += ["", f"[models.{_key(name)}]", *_pairs(head)]
        for dep, fields in spec["deployments"].items():
            table = {"name": dep, **fields}
            if f"{name}/{dep}" in key_env:
                table["key_env"] = key_env[f"{name}/{dep}"]
            out += ["", f"[[models.{_key(name)}.deployments]]", *_pairs(table)]
    return "\n".join(out) + "\n"


def _table(path: tuple[str, ...], values: Mapping[str, Any]) -> list[str]:
    """A table and its sub-tables: scalars and lists here, dicts as [path.key] after them."""
    pairs = _pairs(values)
    lines = ["", "[" + ".".join(_key(p) for p in path) + "]", *pairs] if pairs else []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            lines += _table((*path, key), value)
    return lines


def _pairs(values: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None and not (isinstance(v, dict) and v)]


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML's, but TOML also forbids a raw DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"cannot write {type(value).__name__} in TOML")
