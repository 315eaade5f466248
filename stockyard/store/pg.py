"""The PostgreSQL connection: the part of the ``sqlite3`` API Stockyard uses, over pg8000.

Jobs, reads and operations are written once against ``sqlite3.Connection``: ``execute`` with
``?`` placeholders, rows indexable by position and by name, ``rowcount``, ``executemany``,
transactions opened with ``BEGIN IMMEDIATE``. :class:`PgConnection` offers the same, and
:func:`translate` is the one place where the SQLite dialect becomes PostgreSQL's (it runs
once per distinct statement: the result is cached). Errors come out as the ``sqlite3``
exception classes the callers already catch (a unique violation is an ``IntegrityError``),
so no code above the store knows which database runs.

pg8000 is imported only when a PostgreSQL database is used: SQLite installations never
load it.
"""

from __future__ import annotations

import functools
import logging
import re
import select
import socket
import sqlite3
import time
from collections import OrderedDict
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..dburl import PostgresURL
from . import db

log = logging.getLogger("stockyard")
# pg_advisory_xact_lock key taken by every write transaction: writers queue one after another,
# across processes, exactly like SQLite's BEGIN IMMEDIATE (so read-modify-write jobs, the audit
# chain's append among them, stay correct with several writers).
WRITE_LOCK_KEY = 0x5354_4F43_4B59_0001  # "STOCKY" 1
MIGRATE_LOCK_KEY = 0x5354_4F43_4B59_0002
# SQLSTATE lock_not_available: a lock wait passed ``lock_timeout`` (the busy timeout, bound_lock_waits)
LOCK_NOT_AVAILABLE = "55P03"
TOO_MANY_CONNECTIONS = "53300"  # SQLSTATE of max_connections or a role's CONNECTION LIMIT reached
# SQLSTATE classes that mean the database (its connection, resources, server), not the statement, failed
_LOST_CLASSES = ("08", "53", "57", "58", "XX")
# The busy timeout of one implicit transaction (PgConnection._run_unnamed, shared sessions)
_LOCAL_BUSY_TIMEOUT = "SELECT set_config('lock_timeout', $1, true)"
SHARED_PROBES = 10  # shares_sessions: probes before a server session that never moved means no pooler
SLOW_FIRST_S = 2.0  # a new connection's first answer slower than this is told (_tell_slow_first)
_slow_told = -60.0  # when it was last told (time.monotonic)
PREPARED_MAX = 256  # prepared statements kept per connection (the code has fewer distinct ones)
_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|SELECT pg_advisory)", re.IGNORECASE)

# SQLite pragmas the code reads, as PostgreSQL queries with the same meaning (or a neutral answer).
_PRAGMAS = {
    "data_version": "SELECT COALESCE((SELECT value FROM meta WHERE key = 'config_version'), '0')",
    "page_size": "SELECT current_setting('block_size')::bigint",
    "page_count": "SELECT pg_database_size(current_database()) / current_setting('block_size')::bigint",
    "freelist_count": "SELECT 0",  # autovacuum reuses free space; there is nothing to hand back
    "integrity_check": "SELECT 'ok'",
    "foreign_keys": "SELECT 1",
}
_STRFTIME = {
    "'%Y-%m-%dT%H:%M:%SZ'": '\'YYYY-MM-DD"T"HH24:MI:SS"Z"\'',
    "'%Y-%m-%dT%H:%M:%fZ'": '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\'',
}
_STRFTIME_CALL = re.compile(r"strftime\(\s*('[^']*')\s*,\s*'now'\s*\)", re.IGNORECASE)
_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT\s+OR\s+IGNORE\s+INTO", re.IGNORECASE)
_RETURNING = re.compile(r"\sRETURNING\s", re.IGNORECASE)
_CAST = re.compile(r"CAST\(([\w.]+) AS (INTEGER|BLOB)\)", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*PRAGMA\s+(\w+)\s*(?:\((.*)\)|=\s*(\S+))?\s*;?\s*$", re.IGNORECASE)
_SQLITE_MASTER = re.compile(r"FROM sqlite_master WHERE type = 'table' AND name =", re.IGNORECASE)
_IS_PARAM = re.compile(r"\bIS\s+(NOT\s+)?\?", re.IGNORECASE)
_ROWID = re.compile(r"\browid\b", re.IGNORECASE)
_VALUES_ROW = re.compile(
    r"^(\s*INSERT\s+(?:OR\s+IGNORE\s+)?INTO\s.*?\bVALUES\s*)(\([^()]*\))(.*)$", re.IGNORECASE | re.DOTALL
)
INSERT_CHUNK_MAX = 256  # rows per multi-row INSERT
# A plain INSERT (no OR IGNORE, no ON CONFLICT, no RETURNING) of this many rows or more goes as one
# COPY in text format: the rows encoded here in a few C-level string operations per value instead
# of pg8000's two function calls and three buffer writes per parameter (bench/README.md, "COPY").
COPY_MIN_ROWS = 16
_PLAIN_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)\s*\(([\w\s,]+)\)\s*VALUES\s*\(\?(?:\s*,\s*\?)*\)\s*$", re.I)
PARAMS_MAX = 32_767  # bind parameters per statement (a 16-bit count; signed, to be safe)


class Unportable(sqlite3.NotSupportedError):
    """A statement with no PostgreSQL translation: give it a per-dialect variant in the store."""


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """SQLite SQL → PostgreSQL SQL, with ``?`` placeholders turned into ``$1, $2, …``."""
    pragma = _PRAGMA.match(sql)
    if pragma:
        name = pragma.group(1).lower()
        if name in _PRAGMAS:
            return _PRAGMAS[name]
        if pragma.group(2) is not None or pragma.group(3) is not None:
            return "SELECT 0, 0, 0"  # a setting or an action (busy_timeout, wal_checkpoint): no meaning here
        raise Unportable(f"PRAGMA {name} has no PostgreSQL counterpart")
    if re.match(r"^\s*INSERT\s+OR\s+REPLACE", sql, re.IGNORECASE):
        raise Unportable("INSERT OR REPLACE: write INSERT … ON CONFLICT (…) DO UPDATE, which both speak")
    out = sql
    if _INSERT_OR_IGNORE.match(out):
        out = _INSERT_OR_IGNORE.sub("INSERT INTO", out, count=1)
        returning = _RETURNING.search(out)
        if returning:
            out = out[: returning.start()] + " ON CONFLICT DO NOTHING" + out[returning.start() :]
        else:
            out = out.rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    out = _STRFTIME_CALL.sub(_strftime, out)
    out = _CAST.sub(_cast, out)
    out = _IS_PARAM.sub(lambda m: "IS DISTINCT FROM ?" if m.group(1) else "IS NOT DISTINCT FROM ?", out)
    out = _SQLITE_MASTER.sub(_TABLES, out)
    if out.lstrip().upper().startswith("DELETE"):
        out = _ROWID.sub("ctid", out)  # batch deletes pick rows by physical id (client_keys has a real rowid)
    return _placeholders(out)


_TABLES = "FROM information_schema.tables WHERE table_schema = current_schema() AND table_name ="


def _cast(match: re.Match) -> str:
    """CAST(x AS INTEGER) is 32-bit in PostgreSQL: BIGINT; CAST(text AS BLOB) is its UTF-8 bytes."""
    column, kind = match.group(1), match.group(2).upper()
    return f"CAST({column} AS BIGINT)" if kind == "INTEGER" else f"convert_to({column}, 'UTF8')"


def _strftime(match: re.Match) -> str:
    fmt = match.group(1)
    if fmt == "'%s'":
        return "floor(extract(epoch FROM now()))::bigint"
    if fmt not in _STRFTIME:
        raise Unportable(f"strftime({fmt}, 'now') has no PostgreSQL translation yet")
    return f"to_char(now() AT TIME ZONE 'UTC', {_STRFTIME[fmt]})"


def _placeholders(sql: str) -> str:
    """``?`` → ``$n`` outside string literals, quoted names and comments."""
    out: list[str] = []
    n = 0
    i, length = 0, len(sql)
    while i < length:
        c = sql[i]
        if c in "'\"":
            end = i + 1
            while end < length:
                if sql[end] == c:
                    if end + 1 < length and sql[end + 1] == c:
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1])
            i = end + 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = length if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif c == "?":
            n += 1
            out.append(f"${n}")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


class Row(tuple):
    """A result row like ``sqlite3.Row``: by position, by column name, ``keys()``, ``dict(row)``."""

    _names: dict[str, int]

    def __new__(cls, values: Iterable[Any], names: dict[str, int]) -> "Row":
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return tuple.__getitem__(self, self._names[key])
            except KeyError:
                return tuple.__getitem__(self, self._names[key.lower()])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _value_out(value: Any) -> Any:
    """SUM() of integers comes back as numeric: money stays an int (never a float)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def _value_in(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value  # flags are 0/1 integers, as in SQLite


def _bound(params: Sequence[Any]) -> tuple | None:
    """The values as pg8000's converters bind them (text; NULL as None) when each is a text, an
    integer, a flag or NULL — the ~25 per trace of the writer's rollup upserts — in one pass instead
    of two calls per value (``_value_in``, ``make_param``); None when another type is there."""
    out = []
    for v in params:
        t = type(v)
        if t is str or v is None:
            out.append(v)
        elif t is int:
            out.append(str(v))
        elif t is bool:
            out.append("1" if v else "0")  # flags are 0/1 integers, as in SQLite (_value_in)
        else:
            return None
    return tuple(out)


def _copy_rows(rows: Sequence[Sequence[Any]]) -> bytes | None:
    """Rows as ``COPY``'s text format (tab between values, a line each, ``\\N`` for NULL, backslash
    escapes), UTF-8: what the multi-row INSERT would store. None when a value is of a type this does
    not encode (the INSERT takes them). A text with no UTF-8 form raises ``UnicodeEncodeError`` here,
    before anything is sent, as pg8000's binding does."""
    lines = []
    for row in rows:
        fields = []
        for v in row:
            t = type(v)
            if t is str:
                if "\\" in v or "\n" in v or "\r" in v or "\t" in v:
                    v = v.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
                fields.append(v)
            elif t is int:
                fields.append(str(v))
            elif v is None:
                fields.append("\\N")
            elif t is bytes:
                fields.append("\\\\x" + v.hex())  # bytea's hex form, its backslash escaped for COPY
            elif t is bool:
                fields.append("1" if v else "0")  # flags are 0/1 integers, as in SQLite (_value_in)
            else:
                return None
        lines.append("\t".join(fields))
    lines.append("")
    return "\n".join(lines).encode()


class Cursor:
    """The result of one statement: ``fetchone``, ``fetchall``, iteration, ``rowcount``."""

    def __init__(self, rows: list[Row], rowcount: int, description: Sequence[tuple] | None) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.description = description
        self.lastrowid = None  # PostgreSQL has none: use RETURNING, which SQLite speaks too

    def fetchone(self) -> Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Row]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Row]:
        while (row := self.fetchone()) is not None:
            yield row


def _error(exc: BaseException) -> sqlite3.Error:
    """A pg8000 error as the sqlite3 class with the same meaning (the callers catch those)."""
    import pg8000.exceptions

    if isinstance(exc, pg8000.exceptions.DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        fields = exc.args[0]
        code, message = str(fields.get("C", "")), str(fields.get("M", exc))
        kind: type[sqlite3.Error] = sqlite3.IntegrityError if code.startswith("23") else sqlite3.OperationalError
        error: Any = kind(f"{message} (SQLSTATE {code})")
        error.sqlstate = code
        # A lock another session holds past the busy timeout: the database's failure too (the
        # writer keeps its records waiting, a request is a 503), but the connection is sound.
        error.lock_timeout = code == LOCK_NOT_AVAILABLE
        error.database_failed = code[:2] in _LOST_CLASSES or error.lock_timeout
        return error
    lost: Any = sqlite3.OperationalError(f"PostgreSQL connection failed: {exc}")
    lost.database_failed = True
    return lost


def bound_lock_waits(conn: Any, ms: int | None = None) -> None:
    """Make a lock wait end as SQLite's busy timeout ends one: after ``ms`` (``STOCKYARD_BUSY_TIMEOUT_MS``,
    ``db.BUSY_TIMEOUT_MS``), with SQLSTATE 55P03, instead of for as long as another session holds the
    lock (another replica's write transaction, ``LOCK TABLE``, ``VACUUM FULL``). A ``SET`` after
    connecting, not a startup parameter: PgBouncer refuses startup parameters it does not know.
    It is a new connection's first statement, so a slow answer is told (:func:`_tell_slow_first`)."""
    started = time.monotonic()
    try:
        conn.execute_simple(f"SET lock_timeout = {int(db.BUSY_TIMEOUT_MS if ms is None else ms)}")
    finally:
        _tell_slow_first(time.monotonic() - started)


def _tell_slow_first(waited: float) -> None:
    """Warn (once a minute) when a new connection's first statement waited SLOW_FIRST_S or more. A
    pooler in session mode queues a client until one of its server sessions is free, and every
    connection a replica keeps open (its idle read connections too) holds one: with a pool smaller
    than the replicas need, a replica's LISTEN or configuration watcher waits there, silently."""
    global _slow_told
    now = time.monotonic()
    if waited < SLOW_FIRST_S or now - _slow_told < 60:
        return
    _slow_told = now
    log.warning(
        "a new PostgreSQL connection waited %.1f s for its first answer: a pooler in session mode with no "
        "free server session (its pool must hold every connection of every replica: replicas × "
        "(STOCKYARD_PG_CONNECTIONS + 5)), or a PostgreSQL server under strain",
        waited,
    )


def shares_sessions(url: PostgresURL) -> bool:
    """True when ``url`` reaches PostgreSQL through a pooler in transaction mode (PgBouncer's
    ``pool_mode = transaction``, Supabase's pooler on port 6543, Neon's pooled URL): one server
    session serves many clients, a transaction at a time, so nothing a session keeps — a prepared
    statement, a ``SET``, an advisory lock, a ``LISTEN`` — stays with the client that made it.

    Found by asking, not by port or host name: a client's server session, free again after its
    statement, is taken by a second client's open transaction (a pooler hands out the session freed
    last first) — which no session of its own ever shows. Simple queries only, which any pooler
    passes. A pooler in statement mode, which refuses transactions, is refused here by name. A
    second connection PostgreSQL itself refuses (too many connections: a pooler opens server
    sessions as transactions need them, not as clients log in) means no pooler."""
    import pg8000.core

    first = pg8000.core.CoreConnection(**url.connect_args())
    try:
        try:
            second = pg8000.core.CoreConnection(**url.connect_args())
        except Exception as exc:
            if getattr(_error(exc), "sqlstate", "") == TOO_MANY_CONNECTIONS:
                return False
            raise
        try:
            return any(_session_moved(url, first, second) for _ in range(SHARED_PROBES))
        finally:
            second.close()
    finally:
        first.close()


def _session_moved(url: PostgresURL, first: Any, second: Any) -> bool:
    """One probe: did ``second``'s transaction get ``first``'s server session, or ``first`` another?
    Either is proof; neither may be chance (another client took the session freed), so it is asked
    SHARED_PROBES times."""
    pid = _backend_pid(first)
    try:
        second.execute_simple("BEGIN")
    except Exception as exc:
        raise sqlite3.OperationalError(
            f"{url} refuses transactions ({_error(exc)}): a pooler in statement mode cannot run "
            "Stockyard; use transaction or session mode"
        ) from None
    try:
        return _backend_pid(second) == pid or _backend_pid(first) != pid
    finally:
        second.execute_simple("ROLLBACK")


def _backend_pid(conn: Any) -> int:
    return int(conn.execute_simple("SELECT pg_backend_pid()").rows[0][0])


def no_delay(conn: Any) -> None:
    """Send each message at once (``TCP_NODELAY``, as libpq does). pg8000 leaves Nagle's algorithm
    on: the tail of a message bigger than its write buffer (a multi-row INSERT or upsert) then
    waits for the server's delayed ACK, ~0.4 ms per trace of idle wall time in the writer
    (bench/README.md, "The PostgreSQL writer: TCP_NODELAY, COPY, the GIN index")."""
    sock = getattr(conn, "_usock", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _skip_answer(conn: Any, context: Any) -> None:
    """Read one statement's answer up to its end (CommandComplete) and drop its rows: the busy
    timeout's, sent before the statement whose answer ``context`` takes. An error ends it early
    (PostgreSQL skips the rest up to the Sync): it goes to ``context``, which raises it."""
    from pg8000.core import COMMAND_COMPLETE, DATA_ROW, ERROR_RESPONSE, ROW_DESCRIPTION, _read, ci_unpack

    while True:
        code, length = ci_unpack(_read(conn._sock, 5))
        data = _read(conn._sock, length - 4)
        if code == COMMAND_COMPLETE:
            return
        if code not in (DATA_ROW, ROW_DESCRIPTION):  # ParseComplete, BindComplete, a notice, an error
            conn.message_types[code](data, context)
        if code == ERROR_RESPONSE:
            return


class PgConnection:
    """One pg8000 connection in autocommit mode; transactions are opened explicitly, as with SQLite.

    ``shared_sessions`` (:func:`shares_sessions`: a pooler in transaction mode): nothing may rest on
    the session between transactions. Each statement is then parsed, bound and run before one Sync
    (a statement prepared once would be missing, or another client's, on the next server session),
    and the busy timeout is set in each transaction (``SET LOCAL``), never for the session: a
    ``SET`` would stay on a pooled session other clients get, and be missing on the next one."""

    dialect = "postgresql"
    # Steps a write transaction's jobs defer to its end (the writer's ``begin``/``commit``); None outside one.
    before_commit: list[Callable[[Any], None]] | None = None

    def __init__(self, url: PostgresURL, shared_sessions: bool = False) -> None:
        import pg8000.converters

        self._make_params = pg8000.converters.make_params
        self._url = url
        self.shared_sessions = shared_sessions
        self._conn = self._open()
        self._prepared: OrderedDict[str, tuple] = OrderedDict()  # statement → pg8000's prepared handle
        self.broken = False
        self.row_factory = None  # accepted and ignored: rows are always Row

    def _open(self) -> Any:
        import pg8000.dbapi

        try:
            conn = pg8000.dbapi.Connection(**self._url.connect_args())
            try:
                if not self.shared_sessions:  # else each transaction bounds its own (_begin, _run_unnamed)
                    bound_lock_waits(conn)
            except Exception:
                conn.close()
                raise
        except Exception as exc:
            error = _error(exc)
            unreachable: Any = type(error)(f"cannot open the database {self._url}: {error}")
            unreachable.database_failed = True
            unreachable.sqlstate = getattr(error, "sqlstate", "")  # 53300: PostgreSQL has no connection to spare
            raise unreachable from None
        conn.autocommit = True
        no_delay(conn)
        return conn

    @property
    def in_transaction(self) -> bool:
        return bool(self._conn._in_transaction)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if sql.strip().upper() == "BEGIN IMMEDIATE":
            if self.shared_sessions:  # one round trip: the lock is waited for under the busy timeout
                return self._run(f"{self._begin('BEGIN')}; SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})", ())
            self._run("BEGIN", ())
            return self._run(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})", ())
        if sql.strip().upper() == "BEGIN":  # a read snapshot: every statement sees the same data
            return self._run(self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"), ())
        return self._run(translate(sql), params)

    def _begin(self, begin: str) -> str:
        """``begin``, and with shared sessions the busy timeout for this transaction alone."""
        return f"{begin}; SET LOCAL lock_timeout = {int(db.BUSY_TIMEOUT_MS)}" if self.shared_sessions else begin

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Cursor:
        count = 0
        for params in seq:
            count += max(self.execute(sql, params).rowcount, 0)
        return Cursor([], count, None)

    def insert_many(self, sql: str, seq: Sequence[Sequence[Any]]) -> None:
        """``executemany`` of a one-row ``INSERT [OR IGNORE] … VALUES (…) [ON CONFLICT …]`` as multi-row INSERTs:
        one round trip per chunk instead of per row. Chunks are powers of two (at most
        INSERT_CHUNK_MAX rows, within the protocol's bind parameter limit), so each table needs only
        a few prepared statements. An upsert's rows must have distinct keys."""
        match = _VALUES_ROW.match(sql)
        if match is None:
            raise Unportable(f"insert_many needs INSERT … VALUES (…): {sql[:80]}")
        head, row, tail = match.groups()
        width = row.count("?") or 1
        size = min(INSERT_CHUNK_MAX, 1 << ((PARAMS_MAX // width).bit_length() - 1))
        rows = list(seq)
        # COPY takes several Syncs (pg8000's execute_unnamed): on shared sessions only inside a transaction
        copy_ok = self.in_transaction or not self.shared_sessions
        if copy_ok and len(rows) >= COPY_MIN_ROWS and (plain := _PLAIN_INSERT.match(sql)) is not None:
            data = _copy_rows(rows)
            if data is not None:
                self._copy(f"COPY {plain[1]} ({plain[2]}) FROM STDIN", data)
                return
        start = 0
        while start < len(rows):
            n = min(size, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + n]
            self.execute(f"{head}{', '.join([row] * n)}{tail}", [v for params in chunk for v in params])
            start += n

    def _copy(self, statement: str, data: bytes) -> None:
        """``COPY … FROM STDIN`` of rows :func:`_copy_rows` encoded, in the caller's transaction."""
        try:
            self._conn.execute_unnamed(statement, stream=[data])
        except Exception as exc:
            raise self._failed(exc) from None
        except BaseException:  # as in _run_once: a signal midway leaves the protocol mid-COPY
            self.broken = True
            raise

    def executescript(self, script: str) -> None:
        """Run PostgreSQL SQL as it is (migrations are written for PostgreSQL)."""
        self._forget_prepared()  # a schema change may change what a prepared statement returns
        try:
            self._conn.execute_simple(script)
        except Exception as exc:
            raise self._failed(exc) from None

    def _run(self, statement: str, params: Sequence[Any]) -> Cursor:
        """A read outside a transaction that finds the connection closed (PostgreSQL restarted)
        runs again on a new one: a reader's connection heals by itself, and nothing can have
        been half done. Everything else fails, and the owner decides (the writer retries its batch)."""
        outside = not self.in_transaction
        if outside and self._closed_by_server():
            self.broken = True  # PostgreSQL restarted while this connection was idle: a new one first
        if self.broken and outside:
            self._reopen()
        try:
            return self._run_once(statement, params)
        except sqlite3.Error:
            if not (self.broken and outside and statement.lstrip()[:6].upper() in ("SELECT", "WITH")):
                raise
        self._reopen()
        return self._run_once(statement, params)

    def _reopen(self) -> None:
        self.close()
        self._conn = self._open()
        self._prepared.clear()
        self.broken = False

    def _closed_by_server(self) -> bool:
        """An idle connection has nothing to read unless the server ended it (a shutdown or a
        terminated session: its last message, then the end of the socket). Checked before a
        statement outside a transaction, so a change that must not run twice (a budget
        reservation) goes to a live connection instead of failing on a dead one."""
        sock = getattr(self._conn, "_usock", None)
        if sock is None:
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def _run_once(self, statement: str, params: Sequence[Any]) -> Cursor:
        """One round trip: statements are prepared once per connection, then only bound and run;
        parameterless transaction control goes as a simple query."""
        try:
            if not params and _CONTROL.match(statement):
                context = self._conn.execute_simple(statement)
            else:
                values = _bound(params)
                if values is None:
                    values = self._make_params(self._conn.py_types, tuple(_value_in(v) for v in params))
                if self.shared_sessions:
                    context = self._run_unnamed(statement, values)
                else:
                    name, columns, input_funcs = self._prepare(statement)
                    context = self._conn.execute_named(name, values, columns, input_funcs, statement)
        except UnicodeEncodeError:
            # A value with no UTF-8 form (a lone surrogate, valid in JSON), found while pg8000
            # encodes the parameters, before anything is sent: the statement's fault, raised as
            # SQLite's binding raises it (a request's 400, ``errors.REFUSALS``; a writer job's own
            # failure), never a lost connection (the writer would hold the record and retry it
            # for ever, failing every write meanwhile).
            raise
        except Exception as exc:
            raise self._failed(exc) from None
        except BaseException:  # a signal's exception midway: its answer may still come, read by the next statement
            self.broken = True
            raise
        rows: list[Row] = []
        description = None
        if context.columns is not None:
            names = {c["name"]: i for i, c in enumerate(context.columns)}
            description = [(c["name"], None, None, None, None, None, None) for c in context.columns]
            rows = [Row([_value_out(v) for v in r], names) for r in context.rows or ()]
        return Cursor(rows, context.row_count if context.row_count is not None else -1, description)

    def _run_unnamed(self, statement: str, values: Sequence[Any]) -> Any:
        """``statement`` as the unnamed statement, parsed, bound, described and run before one Sync,
        which a pooler in transaction mode sends to one server session. Outside a transaction the
        busy timeout goes first, in the same implicit transaction (``set_config(…, true)``: ``SET
        LOCAL`` outside a block logs a warning each time), its answer read apart (:func:`_skip_answer`)."""
        from pg8000.core import DESCRIBE, FLUSH_MSG, NULL_BYTE, PORTAL, SYNC_MSG, Context, _flush, _write

        conn = self._conn
        bounded = not conn._in_transaction
        if bounded:
            conn.send_PARSE(NULL_BYTE, _LOCAL_BUSY_TIMEOUT, ())
            conn.send_BIND(NULL_BYTE, (str(int(db.BUSY_TIMEOUT_MS)),))
            conn.send_EXECUTE()
        conn.send_PARSE(NULL_BYTE, statement, ())
        conn.send_BIND(NULL_BYTE, values)
        conn._send_message(DESCRIBE, PORTAL + NULL_BYTE)  # the rows' columns, as a prepared statement has them
        _write(conn._sock, FLUSH_MSG)
        conn.send_EXECUTE()
        _write(conn._sock, SYNC_MSG)
        _flush(conn._sock)
        context = Context(statement)
        if bounded:
            _skip_answer(conn, context)
        conn.handle_messages(context)
        return context

    def _prepare(self, statement: str) -> tuple:
        handle = self._prepared.get(statement)
        if handle is not None:
            self._prepared.move_to_end(statement)
            return handle
        handle = self._conn.prepare_statement(statement, ())
        self._prepared[statement] = handle
        if len(self._prepared) > PREPARED_MAX:
            _, (oldest, _, _) = self._prepared.popitem(last=False)
            self._conn.close_prepared_statement(oldest)
        return handle

    def _forget_prepared(self) -> None:
        for name, _, _ in self._prepared.values():
            try:
                self._conn.close_prepared_statement(name)
            except Exception:
                pass
        self._prepared.clear()

    def _failed(self, exc: BaseException) -> sqlite3.Error:
        error = _error(exc)
        if getattr(error, "database_failed", False) and not getattr(error, "lock_timeout", False):
            self.broken = True  # the socket is gone (or the server shut it): the owner opens a new connection
        return error

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            pass
