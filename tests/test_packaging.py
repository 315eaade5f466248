"""The server packaging in the repository works as written: the Dockerfile and the systemd unit.

No Docker daemon runs on the test machines, so the Dockerfile's own instructions are carried
out by hand instead: its files are laid out in a temp root, its ENV and CMD start the built
pyz with a clean venv's python (nothing installed in it), and its HEALTHCHECK command must
pass against that server and fail without it. The systemd unit is checked by
``systemd-analyze verify``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import ROOT, base_env, mock_env

DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "docs" / "deploy" / "stockyard.service"
ADMIN = "packaging-admin-key-0123456789"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def env_pairs(args: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(args))


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of CMD/HEALTHCHECK CMD: the shell form would need /bin/sh in the image."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_dockerfile_instructions_run_the_pyz_in_a_clean_python(pyz_path, tmp_path):
    steps = instructions(DOCKERFILE)
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and "slim" in steps[0][1]
    user = dict(steps)["USER"]
    assert user not in ("root", "0"), "the container runs as an unprivileged user"
    copies = [a.split() for k, a in steps if k == "COPY"]
    assert copies == [["dist/stockyard.pyz", "/opt/stockyard/stockyard.pyz"]]  # what `make pyz` builds
    assert json.loads(dict(steps)["VOLUME"]) == ["/data"]
    env: dict[str, str] = {}
    for kind, args in steps:
        if kind == "ENV":
            env.update(env_pairs(args))
    assert env["STOCKYARD_DB"].startswith("/data/") and env["XDG_CACHE_HOME"].startswith("/data/")

    # The image's file system, laid out in a temp root: /opt/stockyard and the /data volume.
    root = tmp_path / "root"
    (root / "opt" / "stockyard").mkdir(parents=True)
    shutil.copy(pyz_path, root / "opt" / "stockyard" / "stockyard.pyz")
    (root / "data").mkdir(mode=0o700)

    def rooted(text: str) -> str:
        return text.replace("/opt/", f"{root}/opt/").replace("/data/", f"{root}/data/")

    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python3")

    def command(args: str) -> list[str]:
        argv = [rooted(a) for a in exec_form(args)]
        assert argv[0] == "python3"
        return [python, *argv[1:]]

    cmd = command(dict(steps)["CMD"])
    health_kind, _, health_args = dict(steps)["HEALTHCHECK"].rpartition("CMD ")
    assert "--interval" in health_kind
    health = command(health_args)
    assert "/readyz" in health[-1]

    run_env = {
        **base_env(tmp_path),
        **{k: rooted(v) for k, v in env.items()},
        "STOCKYARD_PORT": "0",  # a free port, read from the banner: tests run side by side
        "STOCKYARD_ADMIN_KEY": ADMIN,  # listening on 0.0.0.0 needs one
    }
    proc = subprocess.Popen(cmd, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port: list[int] = []
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout
        for line in proc.stdout:
            lines.append(line)
            if "listening on http://" in line and not port:
                port.append(int(line.split("listening on http://")[1].split()[0].rsplit(":", 1)[1]))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(30) and port, "the container's CMD did not start the server:\n" + "".join(lines)
        probe = [*health[:-1], health[-1].replace(":4200/", f":{port[0]}/")]
        assert subprocess.run(probe, env=run_env, timeout=30).returncode == 0, "".join(lines)
        assert (root / "data" / "stockyard.db").exists()
        assert any((root / "data" / "cache").iterdir()), "the native libraries unpack onto the volume"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, "docker stop (SIGTERM) ends the server cleanly:\n" + "".join(lines)
    # Nothing listens any more: the same probe now fails, so it can tell a dead server.
    assert subprocess.run(probe, env=run_env, timeout=30, capture_output=True).returncode != 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on this machine")
def test_systemd_unit_verifies(tmp_path):
    unit = tmp_path / "stockyard.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = UNIT.read_text()
    assert "EnvironmentFile=/etc/stockyard/stockyard.env" in text, "secrets come from a 0600 file, not the unit"
    settings = [line for line in text.splitlines() if line.startswith("Environment=")]
    assert settings and not any("KEY" in line for line in settings), "no secret is written in the unit"
    assert "User=stockyard" in text and "KillSignal=SIGTERM" in text


def test_a_broken_unit_is_caught(tmp_path):
    """The check above can fail: systemd-analyze refuses a unit with a bad setting."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not on this machine")
    unit = tmp_path / "stockyard.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/python3", "ExecStart=python3-relative/x"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


HAPROXY_CFG = ROOT / "docs" / "deploy" / "haproxy.cfg"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def replicas(pyz_path, cache_home, mock, tmp_path):
    """Two replicas behind HAProxy started from docs/deploy/haproxy.cfg (its ports swapped for free ones)."""
    from conftest import ServerProcess

    haproxy = shutil.which("haproxy")
    assert haproxy, "make test installs haproxy to check docs/deploy/haproxy.cfg"
    env = mock_env(cache_home, mock)
    servers = [ServerProcess(pyz_path, tmp_path / f"r{i}" / "stockyard.db", env).start() for i in (1, 2)]
    front = free_port()
    cfg = (
        HAPROXY_CFG.read_text()
        .replace("127.0.0.1:4200", f"127.0.0.1:{front}")
        .replace("127.0.0.1:4201", f"127.0.0.1:{servers[0].port}")
        .replace("127.0.0.1:4202", f"127.0.0.1:{servers[1].port}")
    )
    assert cfg.count(f":{servers[0].port}") == 1 and cfg.count(f":{servers[1].port}") == 1
    (tmp_path / "haproxy.cfg").write_text(cfg)
    proc = subprocess.Popen(
        [haproxy, "-db", "-f", str(tmp_path / "haproxy.cfg")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield f"http://127.0.0.1:{front}", servers, proc
    finally:
        proc.terminate()
        proc.wait(10)
        for s in servers:
            s.stop()


def post(url: str, body: dict) -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {}, err.read()
    except OSError:
        return 0, {}, b""


def test_haproxy_example_spreads_streams_and_survives_a_replica(replicas):
    from conftest import wait_for

    front, servers, proc = replicas
    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    wait_for(lambda: post(front, chat)[0] == 200, 20, "HAProxy to pass a request")
    for _ in range(8):
        assert post(front, chat)[0] == 200

    def both_traced() -> bool:  # each replica's writer commits its traces a moment after answering
        return all(s.db_rows("SELECT id FROM traces LIMIT 1") for s in servers)

    wait_for(both_traced, 10, "both replicas to have answered (leastconn spreads equal loads round-robin)")
    status, _, raw = post(front, {**chat, "stream": True})
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]"), "an SSE stream passes through whole"
    servers[0].stop()
    # A request that cannot reach the stopped replica is redispatched to the other one at once,
    # before any health check has marked it down: no client sees an error.
    for _ in range(6):
        assert post(front, chat)[0] == 200
    assert proc.poll() is None
