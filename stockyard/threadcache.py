"""Connection threads kept for reuse (issue 18).

The server serves each client connection on a thread of its own. Starting one costs ~120 µs of
CPU (the clone, CPython's bootstrap, the starter waiting for the new thread to run), ~10% of a
short streamed request on a new connection. Handing a connection to a thread that has finished
its last one costs a third of that. So a thread that ends its connection waits a while for the
next instead of exiting; the accept loop gives a new connection to the thread that waited least
(LIFO: the others time out and end) or starts one when none waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Job = tuple[Callable[..., Any], tuple[Any, ...]]


class _Waiting:
    """One thread waiting for work: ``go`` is released when ``job`` is set (None: end), and the
    thread releases ``taken`` once it has the job (``ThreadCache.run`` waits for that)."""

    __slots__ = ("go", "job", "taken")

    def __init__(self) -> None:
        self.go = threading.Lock()
        self.go.acquire()
        self.taken = threading.Lock()
        self.taken.acquire()
        self.job: Job | None = None


class ThreadCache:
    """Runs jobs on threads that wait up to ``idle_s`` for another job; at most ``keep`` wait."""

    def __init__(
        self,
        keep: int = 256,
        idle_s: float = 30.0,
        name: str = "stockyard-connection",
        ending: Callable[[], None] = lambda: None,
    ) -> None:
        self.keep, self.idle_s, self.name = keep, idle_s, name
        self.ending = ending  # run by each thread as it ends: what it holds of its own is let go now
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on a waiting thread or a new one. Returns once that thread has taken
        the job, as ``Thread.start`` does: under a busy GIL that wait is what keeps the accept loop
        from waking a thousand threads at once."""
        with self._lock:
            waiting = self._waiting.pop() if self._waiting else None
        if waiting is None:
            threading.Thread(target=self._serve, args=((fn, args),), name=self.name, daemon=True).start()
            return
        waiting.job = (fn, args)
        waiting.go.release()
        waiting.taken.acquire()

    def close(self) -> None:
        """End the waiting threads now (a running job finishes; its thread then ends)."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.job = None
            w.go.release()

    def waiting(self) -> int:
        """How many threads wait for a job (the tests read it)."""
        return len(self._waiting)

    def _serve(self, job: Job | None) -> None:
        me = _Waiting()
        try:
            while job is not None:
                fn, args = job
                fn(*args)
                del fn, args, job  # nothing of the last connection stays reachable while waiting
                job = self._next(me)
        finally:
            self.ending()

    def _next(self, me: _Waiting) -> Job | None:
        """The next job, or None once this thread should end."""
        with self._lock:
            if self._closed or len(self._waiting) >= self.keep:
                return None
            self._waiting.append(me)
        if not me.go.acquire(timeout=self.idle_s):
            with self._lock:
                if me in self._waiting:  # nobody took this thread: end it
                    self._waiting.remove(me)
                    return None
            me.go.acquire()  # taken as the wait ran out: the job is being handed over
        job, me.job = me.job, None
        me.taken.release()
        return job
