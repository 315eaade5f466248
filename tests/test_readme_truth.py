"""README.md against the code, mechanically (no server; about a second, most of it importing the CLI).

README is long and many hands edit it; these checks catch the drift a reader cannot see: a command
or flag added without a word, a default changed in one place, a route left out. (The admin routes
and the variables' names have their own checks: test_admin_api, test_ops_config.)
"""

from __future__ import annotations

import argparse
import functools
import re
from pathlib import Path

import pytest

from stockyard import attribution, config, configfile, conversations_api, deployments, multipart, realtime
from stockyard import ui as console
from stockyard.api import logins
from stockyard.cli import build_parser
from stockyard.gemini_api import ACTIONS
from stockyard.httphead import MAX_REQUEST_HEAD
from stockyard.httpio import MAX_JSON_VALUES
from stockyard.memtrim import EVERY_S as TRIM_EVERY_S
from stockyard.providers import ENV_SPECS
from stockyard.server import FIXED_ROUTES, PROXY_ROUTES
from stockyard.store.db import WAL_SIZE_LIMIT_BYTES

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
VARIABLE = re.compile(r"\bSTOCKYARD_[A-Z0-9_]*[A-Z0-9]\b")
KNOWN = set(VARIABLE.findall("\n".join(p.read_text() for p in (ROOT / "stockyard").rglob("*.py"))))  # read by the code
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# a default README writes in words: nothing to compare with a value
DESCRIBED = re.compile(r"^(unset|none|off|keep|a quarter|\()")
SNAPSHOT = {"STOCKYARD_SNAPSHOT": "/nonexistent/snapshot.db"}  # STOCKYARD_SNAPSHOT_EVERY is refused without one


def section(heading: str) -> str:
    """README's text under ``heading`` (e.g. ``## Commands``), up to the next heading."""
    body = README.split(f"\n{heading}\n", 1)[1]
    stop = re.search(r"^#+ ", body, re.M)
    return body[: stop.start()] if stop else body


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (a ``\\|`` inside a cell is kept as ``|``)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = re.split(r"(?<!\\) \| ", line.strip().strip("|").strip())
            rows.append([cell.replace("\\|", "|") for cell in cells])
    return rows


@functools.cache
def parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command and sub-command's parser, by its words (``("keys", "create")``)."""
    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        found[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + (name,))

    walk(build_parser(), ())
    return found


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    """The long options a parser takes (``--db``, ``--json``, …)."""
    return {flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")}


def test_every_command_and_sub_command_has_a_row_in_the_commands_table():
    """The Commands table names every command, and in its rows every sub-command."""
    rows = {}
    for row in table_rows(section("## Commands")):
        words = re.match(r"`([a-z-]+)", row[0])
        if words:
            rows[words.group(1)] = rows.get(words.group(1), "") + row[0]
    commands = parsers()
    for path in commands:
        if len(path) == 1:
            assert path[0] in rows, f"`{path[0]}` has no row in README's Commands table"
        elif len(path) == 2:
            assert re.search(rf"\b{path[1]}\b", rows[path[0]]), f"`{' '.join(path)}` is not in its Commands row"


def test_every_flag_is_in_readme_and_every_flag_readme_gives_a_command_exists():
    """Each flag of each command appears in README; each ``--flag`` README writes after
    ``stockyard COMMAND`` (an example, or the Commands table) is one of that command's."""
    commands = parsers()
    for path, parser in commands.items():
        for flag in flags_of(parser) - {"--help"}:
            assert flag in README, f"`stockyard {' '.join(path)} {flag}` is not in README"
    of_command: dict[str, set[str]] = {}
    for path, parser in commands.items():
        if path:
            of_command.setdefault(path[0], set()).update(flags_of(parser))
    uses = [(m.group(1), m.group(2)) for m in re.finditer(r"\bstockyard(?:\.pyz)? ([a-z][a-z-]*)([^`\n#]*)", README)]
    uses += [(row[0].strip("`").split()[0], row[0]) for row in table_rows(section("## Commands"))]
    checked = 0
    for command, rest in uses:
        if command not in of_command:
            continue
        for flag in FLAG.findall(rest):
            assert flag in of_command[command], f"README gives `stockyard {command} … {flag}`, which it does not take"
            checked += 1
    assert checked > 50, "README's command examples were not found"


def test_commands_without_db_are_the_ones_readme_names():
    """README says every command takes ``--db``, naming the exceptions."""
    commands = parsers()
    leaves = [path for path, parser in commands.items() if path and parser._subparsers is None]
    lacking = {path[0] for path in leaves if "--db" not in flags_of(commands[path])}
    intro = section("## Commands").split("\n|", 1)[0]
    exceptions = re.search(r"all but ((?:`[a-z-]+`(?:, | and )?)+) take `--db", intro)
    said = set(re.findall(r"`([a-z-]+)`", exceptions.group(1))) if exceptions else set()
    assert said == lacking, f"commands without --db: {sorted(lacking)}; README excepts {sorted(said)}"


def _expanded(cell: str) -> list[str]:
    """The variables a cell names, an abbreviation spelled out (`_IDLE_TIMEOUT` after
    `STOCKYARD_WEBSOCKET_MAX_CONNECTIONS`: the variable of that family that ends so)."""
    names = VARIABLE.findall(cell)
    for short in re.findall(r"`(_[A-Z_]+)`", cell):
        family = names[0].split("_")[1]
        names += [name for name in KNOWN if name.endswith(short) and name.split("_")[1] == family]
    return names


def _value(variable: str, text: str) -> str | None:
    """The value README's default ``text`` stands for, as the variable would be set to it; None
    when README describes it in words (unset, off, a formula)."""
    text = text.strip()
    if DESCRIBED.match(text):
        return None
    quoted = re.match(r"`([^`]+)`", text)
    if quoted:
        return quoted.group(1)
    number = re.match(r"(\d[\d,]*(?:\.\d+)?)\s*(MiB|MB|KiB|s|m|h|d)?\b", text)
    if number is None:
        return None
    amount, unit = number.group(1).replace(",", ""), number.group(2) or ""
    if unit in ("MiB", "MB", "KiB"):
        shift = 20 if unit != "KiB" else 10
        return amount if variable.endswith("_MB") else str(int(amount) << shift)
    return amount if unit == "s" else amount + unit


def _defaults(rows: list[list[str]], names_at: int, default_at: int) -> list[tuple[str, str]]:
    """(variable, value) for each default a table states as a value, its names and defaults in the
    columns given."""
    found = []
    for row in rows:
        names = _expanded(row[names_at])
        if not names:
            continue
        texts = [row[default_at]]
        if len(names) > 1:  # `10 s / 600 s`, `off, none, false`; a remark in brackets is for all of them
            plain = re.sub(r"\([^)]*\)", "", row[default_at])
            texts = next((t for t in (plain.split(" / "), plain.split(", ")) if len(t) == len(names)), texts)
        if len(texts) == 1:
            texts *= len(names)
        for name, text in zip(names, texts):
            value = _value(name, text)
            if value is not None:
                found.append((name, value))
    return found


@pytest.mark.parametrize(
    "heading, names_at, default_at",
    [("## Configuration", 1, 2), ("### Limits and what happens under faults", 0, 1)],
)
def test_defaults_readme_states_are_the_defaults(heading, names_at, default_at):
    """Setting a variable to the default README states changes nothing (the Settings stay equal)."""
    rows = table_rows(section(heading))
    defaults = _defaults(rows, names_at, default_at)
    assert len(defaults) > (25 if heading == "## Configuration" else 12), f"{heading}'s defaults were not found"
    unset = config.load({}, SNAPSHOT)
    for name, value in defaults:
        said = f"README ({heading}) says {name} defaults to {value!r}"
        assert config.load({}, {**SNAPSHOT, name: value}) == unset, said


def test_every_time_readmes_configuration_names_takes_a_duration():
    """README's Configuration says a time is a duration (``30s``, ``1m``) or a number of seconds, except
    the busy timeout (milliseconds): every other time of its table (a default written with a unit: ``30 s``,
    ``5m``) takes ``1m``."""
    intro = section("## Configuration").split("\n|", 1)[0]
    excepted = set(VARIABLE.findall(intro.split("except for", 1)[1]))
    times = set()
    for row in table_rows(section("## Configuration")):
        if re.search(r"\d\s*[smhdw]\b", row[2]):
            times.update(_expanded(row[1]))
    assert excepted == {"STOCKYARD_BUSY_TIMEOUT_MS"} and len(times) > 15, (excepted, times)
    with pytest.raises(ValueError, match="STOCKYARD_BUSY_TIMEOUT_MS"):
        config.load({}, {**SNAPSHOT, "STOCKYARD_BUSY_TIMEOUT_MS": "1m"})
    for name in times - excepted:
        config.load({}, {**SNAPSHOT, name: "1m"})  # a ValueError names the setting README says takes a duration


def test_every_environment_provider_prefix_is_in_its_row():
    """The providers' table lists every model prefix routed to each provider (ENV_SPECS)."""
    rows = table_rows(section("### Providers from the environment"))
    for spec in ENV_SPECS:
        row = next(" ".join(r) for r in rows if f"`{spec.key_var or spec.url_var}`" in r[1])
        for prefix in spec.models:
            assert f"`{prefix}" in row, f"{spec.name}: README's providers table lacks the prefix {prefix!r}"


def test_every_route_the_server_takes_is_in_readme():
    """The proxy's own routes, the operational ones, the refused Realtime ones and Gemini's
    methods are each named in README."""
    fixed = [path for path, (_, answer) in FIXED_ROUTES.items() if answer is not console.redirect]  # to /ui/
    paths = [*PROXY_ROUTES, *fixed, console.PREFIX, realtime.PATH, *realtime.UNMETERED]
    for path in paths:
        assert f"`{path}" in README or f"{path}`" in README or f" {path}" in README, f"{path} is not in README"
    for method in ACTIONS:
        assert f":{method}`" in README, f"Gemini's :{method} is not in README"


def test_numbers_readme_states_about_limits_are_the_code_s():
    """The fixed bounds README's Limits table states, against their constants."""
    limits = {row[0]: row[1] for row in table_rows(section("### Limits and what happens under faults"))}
    assert limits["(fixed)"] == f"{MAX_JSON_VALUES:,}"
    queue = config.Settings()
    assert limits["writer queue"].startswith(
        f"{queue.writer_queue_size:,} records, {queue.writer_queue_bytes >> 20} MB of their bodies"
    )
    assert limits["WAL file"].startswith(f"{WAL_SIZE_LIMIT_BYTES >> 20} MB")
    assert f"at most every {TRIM_EVERY_S:g} s" in limits["memory after a burst"]


def test_bounds_readme_states_in_its_prose_are_the_code_s():
    """Bounds README states in passing, written from the constants that enforce them."""
    prose = " ".join(README.split())
    said = [
        f"{logins.FAILED_LOGIN_LIMIT} wrong guesses in any {logins.FAILED_LOGIN_WINDOW_S:g} s",
        f"{MAX_REQUEST_HEAD >> 10} KiB of request head",
        f"at most {attribution.MAX_TAGS} tags (names up to {attribution.TAG_NAME_CAP} characters, values up to "
        f"{attribution.TAG_VALUE_CAP}) and one end user of up to {attribution.USER_CAP}",
        f"of at most {configfile.MAX_FILE_BYTES >> 20} MiB of UTF-8",
        f"form fields are kept (each at most {multipart.MAX_FIELD_BYTES >> 10} KiB",
        f"a call adds up to {conversations_api.MAX_ITEMS_PER_CALL:,} items",
        f"cools it down for its `Retry-After` (else {deployments.COOLDOWN_429_S:g} s), a 5xx or a timeout for "
        f"`Retry-After` (else {deployments.COOLDOWN_ERROR_S:g} s), at most {deployments.COOLDOWN_CAP_S:g} s; "
        f"after {deployments.BREAKER_FAILURES} failures in a row its breaker opens for "
        f"{deployments.BREAKER_COOLDOWN_S:g} s",
    ]
    for text in said:
        assert text in prose, f"README does not say {text!r}"


def test_postgresql_connections_beside_the_pool_are_counted_alike():
    """Every place README sizes PostgreSQL's max_connections adds the same number of a server's own
    connections to STOCKYARD_PG_CONNECTIONS."""
    counts = set(re.findall(r"\((?:it|this) \+ (\d+)\)", README))
    counts |= set(re.findall(r"plus (\d+) of its own", README))
    counts |= set(re.findall(r"Each server also holds (\d+) more", README))
    assert len(counts) == 1, f"README adds different numbers of a server's own connections: {sorted(counts)}"
