"""Operations settings: snapshot, retention and size cap from flags and environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stockyard import config


def test_snapshot_from_env_and_flags_win():
    s = config.load({}, {"STOCKYARD_SNAPSHOT": "/var/lib/stockyard/snap.db", "STOCKYARD_SNAPSHOT_EVERY": "30s"})
    assert s.snapshot_path == Path("/var/lib/stockyard/snap.db") and s.snapshot_every_s == 30
    s = config.load({"snapshot": "/tmp/other.db", "snapshot_every": "1h"}, {"STOCKYARD_SNAPSHOT": "/x.db"})
    assert s.snapshot_path == Path("/tmp/other.db") and s.snapshot_every_s == 3600
    assert config.load({}, {"STOCKYARD_SNAPSHOT": "/x.db"}).snapshot_every_s == 15 * 60
    assert config.load({}, {}).snapshot_path is None


def test_retention_settings():
    s = config.load(
        {}, {"STOCKYARD_RETENTION_BODIES": "7d", "STOCKYARD_RETENTION_TRACES": "90d", "STOCKYARD_BODIES_MAX_MB": "512"}
    )
    assert (s.retention_bodies_s, s.retention_traces_s, s.bodies_max_bytes) == (7 * 86400, 90 * 86400, 512 << 20)
    s = config.load({}, {})
    assert (s.retention_bodies_s, s.retention_traces_s, s.bodies_max_bytes) == (None, None, None)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30),
        ("15m", 900),
        ("1h", 3600),
        ("7d", 604800),
        ("2w", 1209600),
        ("90", 90),
        ("1.5h", 5400),
        (" 10 m ", 600),
    ],
)
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "env",
    [
        {"STOCKYARD_SNAPSHOT_EVERY": "15m"},
        {"STOCKYARD_SNAPSHOT": "/x.db", "STOCKYARD_SNAPSHOT_EVERY": "0s"},
        {"STOCKYARD_RETENTION_BODIES": "5y"},
        {"STOCKYARD_BODIES_MAX_MB": "-1"},
        # were read by a bare float()/int(): "30s" stopped the start with "could not convert string to float"
        # (no name), and 0 or a negative number was taken (an upstream timeout of 0, a body limit of -5)
        {"STOCKYARD_IDLE_TIMEOUT": "0"},
        {"STOCKYARD_REQUEST_READ_TIMEOUT": "-1"},
        {"STOCKYARD_UPSTREAM_CONNECT_TIMEOUT": "soon"},
        {"STOCKYARD_UPSTREAM_TIMEOUT": "0"},
        {"STOCKYARD_MAX_BODY_BYTES": "-5"},
        {"STOCKYARD_BODY_CAP_BYTES": "lots"},
    ],
)
def test_bad_values_are_refused_with_the_name(env):
    with pytest.raises(ValueError) as err:
        config.load({}, env)
    assert any(name in str(err.value) for name in ("STOCKYARD_", "--snapshot"))


def test_every_timeout_takes_a_duration():
    """The idle, request-read and upstream timeouts take ``30s``/``2m`` as every other time does."""
    got = config.load(
        {},
        {
            "STOCKYARD_IDLE_TIMEOUT": "45s",
            "STOCKYARD_REQUEST_READ_TIMEOUT": "1m",
            "STOCKYARD_UPSTREAM_CONNECT_TIMEOUT": "2.5",
            "STOCKYARD_UPSTREAM_TIMEOUT": "15m",
        },
    )
    assert (
        got.idle_timeout_s,
        got.request_read_timeout_s,
        got.upstream_connect_timeout_s,
        got.upstream_read_timeout_s,
    ) == (45, 60, 2.5, 900)


ROOT = Path(__file__).resolve().parents[1]


def test_readme_configuration_table_names_every_variable_the_code_reads():
    """README's Configuration table and the code name the same STOCKYARD_* variables, and the
    providers' table every provider's key variable (ENV_SPECS)."""
    from stockyard.providers import ENV_SPECS

    readme = (ROOT / "README.md").read_text()
    table = readme.split("\n## Configuration\n", 1)[1].split("\n### Configuration as code", 1)[0]
    providers = readme.split("\n### Providers from the environment\n", 1)[1].split("\n### ", 1)[0]
    code = "\n".join(p.read_text() for p in (ROOT / "stockyard").rglob("*.py"))
    read = set(re.findall(r"\bSTOCKYARD_[A-Z0-9_]*[A-Z0-9]\b", code))
    documented = set(re.findall(r"\bSTOCKYARD_[A-Z0-9_]*[A-Z0-9]\b", table))
    assert read - documented == set(), "variables the code reads that README's Configuration table lacks"
    assert documented - read == set(), "variables README's Configuration table names that no code reads"
    for spec in ENV_SPECS:
        assert f"`{spec.key_var or spec.url_var}`" in providers, spec.name
