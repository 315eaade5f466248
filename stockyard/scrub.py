"""Known secrets out of everything that may reach a client, a log or a trace.

The secrets are the provider keys in use (environment and database, including env keys a
database provider overrides) and Stockyard's own admin and encryption secrets; the
:class:`Scrubber` is told them on every reload and swaps them whole.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from .logbuffer import printable

MIN_SECRET = 4  # shorter values would redact ordinary text


class Scrubber:
    """Replaces every known secret with ``[redacted]`` in text and bytes."""

    def __init__(self) -> None:
        self._secrets: tuple[str, ...] = ()
        self._encoded: tuple[bytes, ...] = ()  # the same, encoded once: every trace scrubs both bodies

    def use(self, provider_keys: Iterable[str | None], own: Iterable[str | None]) -> None:
        """The secrets to scrub from now on: provider keys and Stockyard's own (admin key, encryption secret)."""
        secrets = [k for k in (*provider_keys, *own) if k]
        # Longest first, so a secret that contains another is replaced whole.
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True))
        self._encoded = tuple(s.encode(errors="surrogatepass") for s in self._secrets)  # never raises on reload

    def text(self, text: str) -> str:
        """Remove every known secret from a text that may reach a client, log or trace."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def bytes(self, data: bytes) -> bytes:
        """Remove every known secret from bytes (a trace's bodies)."""
        for raw in self._encoded:
            if raw in data:
                data = data.replace(raw, b"[redacted]")
        return data


class ScrubLogs(logging.Filter):
    """Remove known secrets from every log record, its arguments and its traceback; escape
    control characters in its message (client text in it cannot forge lines or drive terminals)."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrub
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it; still scrub the raw text
            message = f"{record.msg} {record.args}"
        record.msg, record.args = printable(self._scrub(message)), None  # client text cannot forge lines
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True
