"""Models and their deployments: validation, changes, loading (the CLI and the admin API call here).

A deployment's own key reaches the database only as a vault token bound to its row
(``vault.aad_for(id, "deployment:MODEL/NAME")``); audit entries and listings carry its last
four characters at most. Adding a deployment to a model that does not exist yet creates the
model with the default strategy.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from dataclasses import replace
from typing import Any, Mapping, Sequence

from .. import vault
from ..deployments import STRATEGIES, Deployment, ModelRoute
from ..providers import ENV_SPECS, Registry, from_env
from ..store import storable
from ..times import now_iso
from . import Operations, Refused, conflict, invalid
from .providers import NAME, _no_secret, _vault_and_audit_refusals, _vault_for, check_key

log = logging.getLogger("stockyard.models")

_MODEL = re.compile(r"^[^\s/]{1,200}$")  # a model clients name (no "/": that names a provider)
_TARGET = re.compile(r"^[^\s]{1,200}$")  # a model a request may go to: a name or provider/model
MAX_FALLBACKS = 20
MAX_LIMIT = 1_000_000_000
DEPLOYMENT_FIELDS = ("name", "provider", "model", "weight", "priority", "rpm", "tpm", "api_key")
MODEL_FIELDS = ("name", "strategy", "fallbacks", "context_fallback")
STORED = ("provider", "upstream_model", "weight", "priority", "rpm", "tpm")
_UNSET: Any = object()


# -- validation ------------------------------------------------------------------------------


def check_model_name(name: Any, param: str = "name", target: bool = False) -> str:
    pattern = _TARGET if target else _MODEL
    # storable: no NUL or lone surrogate (PostgreSQL's text has none, nor has a model's name)
    if not isinstance(name, str) or not pattern.match(name) or not storable(name) or name.lower().startswith("sk-"):
        shape = "provider/model or a model name" if target else "a model name without '/'"
        raise invalid(
            f"model {name!r} is not valid: {shape} of up to 200 characters without spaces, e.g. gpt-4o",
            param,
        )
    return name


def check_strategy(value: Any) -> str:
    if value not in STRATEGIES:
        raise invalid(f"strategy {value!r} is not valid: use one of {', '.join(STRATEGIES)}", "strategy")
    return value


def check_fallbacks(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_FALLBACKS:
        raise invalid(f"fallbacks must be a list of at most {MAX_FALLBACKS} model names", "fallbacks")
    return tuple(check_model_name(v, "fallbacks", target=True) for v in value)


def check_context_fallback(value: Any) -> str | None:
    return None if value in (None, "") else check_model_name(value, "context_fallback", target=True)


def check_deployment_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid(f"deployment name {name!r} is not valid: use 1-40 lower-case letters, digits, '-' or '_'", "name")
    return name


def check_provider_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise invalid(f"provider {name!r} is not a provider name", "provider")
    return name


def check_number(value: Any, param: str, low: int, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if type(value) is not int or not low <= value <= MAX_LIMIT:
        extra = " (or null: no limit)" if optional else ""
        raise invalid(f"{param} must be a whole number from {low}{extra}", param)
    return value


def deployment_fields(given: dict[str, Any]) -> dict[str, Any]:
    """The checked non-key fields present in ``given`` (names as stored)."""
    out: dict[str, Any] = {}
    if "provider" in given:
        out["provider"] = check_provider_name(given["provider"])
    if "model" in given:
        out["upstream_model"] = check_model_name(given["model"], "model", target=True)
    if "weight" in given:
        out["weight"] = check_number(given["weight"], "weight", 1, False)
    if "priority" in given:
        out["priority"] = check_number(given["priority"], "priority", 0, False)
    for limit in ("rpm", "tpm"):
        if limit in given:
            out[limit] = check_number(given[limit], limit, 1, True)
    return out


def _aad(row_id: int, model: str, name: str) -> bytes:
    return vault.aad_for(row_id, f"deployment:{model}/{name}")


# -- references between models and providers --------------------------------------------------

# Provider names a server may have from its environment (whether this process has them set or
# not: the CLI applying a change need not share the server's environment), and the model-name
# prefixes they claim.
ENV_PROVIDERS = frozenset(spec.name for spec in ENV_SPECS) | {"azure"}
ENV_PREFIXES = tuple(prefix for spec in ENV_SPECS for prefix in spec.models)


def _leads_somewhere(target: str, models: Mapping[str, Any], providers: Mapping[str, Sequence[str]]) -> bool:
    """A fallback target routes: a model here, ``provider/model`` of a known provider, or a name a
    provider claims by its model prefixes (as ``Registry.resolve`` routes a bare name)."""
    head, sep, rest = target.partition("/")
    if target in models or (sep and rest and (head in providers or head in ENV_PROVIDERS)):
        return True
    lowered = target.lower()
    prefixes = (*ENV_PREFIXES, *(p for claimed in providers.values() for p in claimed))
    return any(lowered.startswith(prefix.lower()) for prefix in prefixes)


def dangling(
    models: Mapping[str, Mapping[str, Any]], providers: Mapping[str, Sequence[str]], env: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """Each reference of ``models`` that leads nowhere, as (model, field, problem): a deployment on a
    provider that does not exist, a fallback or context fallback that names no model and no
    provider. ``models`` as a configuration file holds them (``configfile.Desired.models``),
    ``providers`` the database providers with the model prefixes each claims. Without this check
    such a deployment was left out and such a fallback skipped, silently, at every request.

    With one provider at most (those of ``providers`` and those ``env`` sets up) every name
    routes — ``Registry.resolve`` sends a name no prefix claims to the only provider — so a
    fallback is then never refused (an Ollama-only setup names its models bare)."""
    problems: list[tuple[str, str, str]] = []
    single = len(set(providers) | {p.name for p in from_env(env)}) <= 1
    for name, model in models.items():
        for dep, fields in model.get("deployments", {}).items():
            provider = fields["provider"]
            if provider not in providers and provider not in ENV_PROVIDERS:
                problems.append(
                    (
                        name,
                        "provider",
                        f"model {name!r}: deployment {dep!r} is on provider {provider!r}, which does not exist",
                    )
                )
        targets = [("fallbacks", t) for t in model.get("fallbacks", ())]
        if model.get("context_fallback"):
            targets.append(("context_fallback", model["context_fallback"]))
        for field_name, target in targets:
            if not single and not _leads_somewhere(target, models, providers):
                problems.append(
                    (
                        name,
                        field_name,
                        f"model {name!r}: {field_name} {target!r} is neither a model nor a provider's model "
                        "(name it as provider/model, or add the model first)",
                    )
                )
    return problems


def dangling_now(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """:func:`dangling` for what the database holds (inside a change's transaction)."""
    providers: dict[str, list[str]] = {}
    for r in conn.execute("SELECT name, models FROM providers"):
        try:
            providers[r["name"]] = [str(m) for m in json.loads(r["models"])]
        except (TypeError, ValueError):
            providers[r["name"]] = []
    models = {
        m["name"]: {
            "fallbacks": m["fallbacks"],
            "context_fallback": m["context_fallback"],
            "deployments": {d["name"]: d for d in m["deployments"]},
        }
        for m in rows(conn)
    }
    return dangling(models, providers, os.environ)


# -- reading ---------------------------------------------------------------------------------


def rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every model with its deployments, as stored (keys as hints only), in the order added."""
    out = []
    for m in conn.execute("SELECT * FROM models ORDER BY id").fetchall():
        try:
            fallbacks = [str(f) for f in json.loads(m["fallbacks"])]
        except (TypeError, ValueError):
            fallbacks = []
        deployments = [
            {
                "name": d["name"],
                "provider": d["provider"],
                "model": d["upstream_model"],
                "weight": d["weight"],
                "priority": d["priority"],
                "rpm": d["rpm"],
                "tpm": d["tpm"],
                "key": d["key_hint"],
            }
            for d in conn.execute("SELECT * FROM model_deployments WHERE model = ? ORDER BY id", (m["name"],))
        ]
        out.append(
            {
                "name": m["name"],
                "strategy": m["strategy"],
                "fallbacks": fallbacks,
                "context_fallback": m["context_fallback"],
                "deployments": deployments,
            }
        )
    return out


def load(conn: sqlite3.Connection, secret: str | None, registry: Registry) -> list[ModelRoute]:
    """The routes a server uses: deployments bound to their providers, own keys decrypted.

    A deployment whose provider is not configured is left out (named in ``problems``); one
    whose key cannot be decrypted gets the provider's ``key_error`` (it fails, the rest work).
    """
    box: vault.Vault | None = None
    box_error: str | None = None
    try:
        salt = vault.read_salt(conn)
        if secret and salt is not None:
            box = vault.Vault(secret, salt)
        else:
            box_error = "STOCKYARD_ENCRYPTION_KEY is not set" if not secret else "the vault salt is missing"
    except vault.VaultError as exc:
        box_error = str(exc)
    ids: dict[tuple[str, str], int] = {}  # (model, deployment) -> its row (its shared rate window)
    tokens: dict[tuple[str, str], tuple[int, str]] = {}  # ... -> (row, its own key, encrypted)
    for r in conn.execute("SELECT id, model, name, key_token FROM model_deployments"):
        ids[(r["model"], r["name"])] = r["id"]
        if r["key_token"] is not None:
            tokens[(r["model"], r["name"])] = (r["id"], r["key_token"])
    routes = []
    for m in rows(conn):
        deployments, problems = [], []
        for d in m["deployments"]:
            provider = registry.by_name.get(d["provider"])
            if provider is None:
                problems.append(f"{d['name']}: provider {d['provider']!r} is not configured")
                continue
            own = tokens.get((m["name"], d["name"]))
            if own is not None:
                try:
                    if box is None:
                        raise vault.VaultError(box_error or "no vault")
                    key = box.decrypt(own[1], _aad(own[0], m["name"], d["name"]))
                    provider = replace(provider, api_key=key, key_hint=vault.last4(key), key_error=None)
                except vault.VaultError as exc:
                    provider = replace(provider, api_key=None, key_error=str(exc))
            deployments.append(
                Deployment(
                    m["name"],
                    d["name"],
                    provider,
                    d["model"],
                    d["weight"],
                    d["priority"],
                    d["rpm"],
                    d["tpm"],
                    own_key=own is not None,
                    row_id=ids.get((m["name"], d["name"])),
                )
            )
        for problem in problems:
            log.warning("model %r: deployment %s; it is left out", m["name"], problem)
        routes.append(
            ModelRoute(
                m["name"],
                m["strategy"],
                tuple(deployments),
                tuple(m["fallbacks"]),
                m["context_fallback"],
                tuple(problems),
            )
        )
    return routes


def stored_keys(conn: sqlite3.Connection, secret: str | None) -> dict[tuple[str, str], str | None]:
    """(model, deployment) → its decrypted own key (None when it cannot be read): for config plan."""
    out: dict[tuple[str, str], str | None] = {}
    rows_ = conn.execute("SELECT id, model, name, key_token FROM model_deployments WHERE key_token IS NOT NULL")
    for r in rows_.fetchall():
        try:
            salt = vault.read_salt(conn)
            if not secret or salt is None:
                raise vault.VaultError("no vault")
            out[(r["model"], r["name"])] = vault.Vault(secret, salt).decrypt(
                r["key_token"], _aad(r["id"], r["model"], r["name"])
            )
        except vault.VaultError:
            out[(r["model"], r["name"])] = None
    return out


# -- changes ---------------------------------------------------------------------------------


def _change(ops: Operations, action: str, target: str, details: dict[str, Any], apply) -> Any:
    with _vault_and_audit_refusals():
        return ops.change(action, target, details, apply)


def _model_row(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()


def _missing_model(name: str) -> Refused:
    return Refused(404, f"no model named {name!r}; add it with `stockyard models add` or POST /api/models", "not_found")


def _insert_model(conn: sqlite3.Connection, name: str, strategy: str, fallbacks, context_fallback) -> None:
    now = now_iso()
    conn.execute(
        "INSERT INTO models (name, strategy, fallbacks, context_fallback, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (name, strategy, json.dumps(list(fallbacks)), context_fallback, now, now),
    )


def add_model(
    ops: Operations, name: Any, *, strategy: Any = "weighted", fallbacks: Any = None, context_fallback: Any = None
) -> None:
    name, strategy = check_model_name(name), check_strategy(strategy)
    chain, larger = check_fallbacks(fallbacks), check_context_fallback(context_fallback)

    def apply(conn: sqlite3.Connection) -> None:
        if _model_row(conn, name) is not None:
            raise conflict(f"model {name!r} already exists; change it with `models set` or PATCH /api/models/{name}")
        _insert_model(conn, name, strategy, chain, larger)

    details = {"name": name, "strategy": strategy, "fallbacks": list(chain), "context_fallback": larger}
    _change(ops, "model.add", f"model:{name}", details, apply)


def update_model(
    ops: Operations, name: Any, *, strategy: Any = _UNSET, fallbacks: Any = _UNSET, context_fallback: Any = _UNSET
) -> None:
    name = check_model_name(name)
    fields: dict[str, Any] = {}
    if strategy is not _UNSET:
        fields["strategy"] = check_strategy(strategy)
    if fallbacks is not _UNSET:
        fields["fallbacks"] = json.dumps(list(check_fallbacks(fallbacks)))
    if context_fallback is not _UNSET:
        fields["context_fallback"] = check_context_fallback(context_fallback)
    if not fields:
        raise invalid("nothing to change: give strategy, fallbacks or context_fallback")

    def apply(conn: sqlite3.Connection) -> None:
        if _model_row(conn, name) is None:
            raise _missing_model(name)
        sets = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE models SET {sets}, updated_at = ? WHERE name = ?", (*fields.values(), now_iso(), name))

    shown = {k: json.loads(v) if k == "fallbacks" else v for k, v in fields.items()}
    _change(ops, "model.update", f"model:{name}", {"name": name, **shown}, apply)


def remove_model(ops: Operations, name: Any) -> None:
    name = check_model_name(name)

    def apply(conn: sqlite3.Connection) -> None:
        if conn.execute("DELETE FROM models WHERE name = ?", (name,)).rowcount == 0:
            raise _missing_model(name)
        conn.execute("DELETE FROM model_deployments WHERE model = ?", (name,))

    _change(ops, "model.remove", f"model:{name}", {"name": name}, apply)


def _store_key(ops: Operations, conn: sqlite3.Connection, row_id: int, model: str, name: str, key: str) -> None:
    token = _vault_for(ops, conn).encrypt(key, _aad(row_id, model, name))
    conn.execute(
        "UPDATE model_deployments SET key_token = ?, key_hint = ?, updated_at = ? WHERE id = ?",
        (token, vault.last4(key), now_iso(), row_id),
    )


def add_deployment(ops: Operations, model: Any, fields: dict[str, Any]) -> str:
    """Add a deployment (``provider`` and ``model`` required); creates the model when missing.

    Returns the deployment's name (the provider's name, numbered when taken, unless given)."""
    model = check_model_name(model, "model")
    unknown = sorted(set(fields) - set(DEPLOYMENT_FIELDS))
    if unknown:
        raise invalid(f"unknown field(s) {', '.join(map(repr, unknown))}; use {', '.join(DEPLOYMENT_FIELDS)}")
    for required in ("provider", "model"):
        if fields.get(required) is None:
            raise invalid(f'"{required}" is required', required)
    checked = {"weight": 1, "priority": 0, "rpm": None, "tpm": None, **deployment_fields(fields)}
    wanted = check_deployment_name(fields["name"]) if fields.get("name") is not None else None
    key = check_key(fields["api_key"]) if fields.get("api_key") is not None else None
    if key is not None and not ops.secret:
        raise _no_secret()
    details: dict[str, Any] = {"model": model, **checked, "key_hint": vault.last4(key) if key else None}

    def apply(conn: sqlite3.Connection) -> str:
        if _model_row(conn, model) is None:
            _insert_model(conn, model, "weighted", (), None)
        taken = {r[0] for r in conn.execute("SELECT name FROM model_deployments WHERE model = ?", (model,))}
        if wanted is not None and wanted in taken:
            raise conflict(f"model {model!r} already has a deployment named {wanted!r}")
        base = checked["provider"]
        name = wanted or next(n for n in (base, *(f"{base}-{i}" for i in range(2, 10_000))) if n not in taken)
        details["name"] = name
        now = now_iso()
        row_id = conn.execute(  # RETURNING: both stores speak it (PostgreSQL has no lastrowid)
            "INSERT INTO model_deployments (model, name, provider, upstream_model, weight, priority, rpm, tpm, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (model, name, *(checked[k] for k in STORED), now, now),
        ).fetchone()[0]
        if key is not None:  # the row id is part of the key's associated data: insert first
            _store_key(ops, conn, row_id, model, name, key)
        return name

    return _change(ops, "model.deploy", f"model:{model}", details, apply)


def update_deployment(ops: Operations, model: Any, name: Any, fields: dict[str, Any]) -> None:
    """Change fields of a deployment; ``api_key`` None removes its own key (the provider's is used)."""
    model, name = check_model_name(model, "model"), check_deployment_name(name)
    unknown = sorted(set(fields) - set(DEPLOYMENT_FIELDS[1:]))
    if unknown:
        raise invalid(f"unknown field(s) {', '.join(map(repr, unknown))}; use {', '.join(DEPLOYMENT_FIELDS[1:])}")
    checked = deployment_fields(fields)
    key = fields.get("api_key", _UNSET)
    if key is not _UNSET and key is not None:
        key = check_key(key)
        if not ops.secret:
            raise _no_secret()
    if not checked and key is _UNSET:
        raise invalid(f"nothing to change: give {', '.join(DEPLOYMENT_FIELDS[1:])}")
    details: dict[str, Any] = {"model": model, "name": name, **checked}

    def apply(conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT id FROM model_deployments WHERE model = ? AND name = ?", (model, name)).fetchone()
        if row is None:
            raise Refused(404, f"model {model!r} has no deployment named {name!r}", "not_found")
        if checked:
            sets = ", ".join(f"{k} = ?" for k in checked)
            conn.execute(
                f"UPDATE model_deployments SET {sets}, updated_at = ? WHERE id = ?",
                (*checked.values(), now_iso(), row["id"]),
            )
        if key is None:
            conn.execute("UPDATE model_deployments SET key_token = NULL, key_hint = NULL WHERE id = ?", (row["id"],))
            details["key_hint"] = None
        elif key is not _UNSET:
            _store_key(ops, conn, row["id"], model, name, key)
            details["key_hint"] = vault.last4(key)

    _change(ops, "model.deployment.update", f"model:{model}", details, apply)


def remove_deployment(ops: Operations, model: Any, name: Any) -> None:
    model, name = check_model_name(model, "model"), check_deployment_name(name)

    def apply(conn: sqlite3.Connection) -> None:
        gone = conn.execute("DELETE FROM model_deployments WHERE model = ? AND name = ?", (model, name)).rowcount
        if gone == 0:
            raise Refused(404, f"model {model!r} has no deployment named {name!r}", "not_found")

    _change(ops, "model.undeploy", f"model:{model}", {"model": model, "name": name}, apply)
