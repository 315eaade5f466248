"""ClientWatch in process, over real socket pairs: each watch has its own lock, and only requests
still waiting after `late_s` enter the watcher's poll set (bench/README.md)."""

from __future__ import annotations

import socket
import threading

from stockyard.clientwatch import ClientWatch


def test_a_peer_that_closes_calls_its_own_on_gone_among_many_concurrent_watches():
    watch = ClientWatch()
    pairs = [socket.socketpair() for _ in range(16)]
    gone = [threading.Event() for _ in pairs]
    inside = threading.Barrier(len(pairs) + 1)
    release = threading.Event()

    def request(i: int) -> None:
        with watch.watching(pairs[i][0], gone[i].set):
            inside.wait(10)
            release.wait(10)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    inside.wait(10)
    for i in range(0, len(pairs), 2):
        pairs[i][1].close()
    for i in range(0, len(pairs), 2):
        assert gone[i].wait(10), f"watch {i} never noticed its peer leave"
    release.set()
    for t in threads:
        t.join(10)
    assert not any(gone[i].is_set() for i in range(1, len(pairs), 2)), "a watch fired for another's peer"
    for a, b in pairs:
        a.close()
        b.close()


def test_a_closed_socket_is_not_watched_and_a_second_block_on_one_socket_is_inert():
    watch = ClientWatch()
    closed, closed_peer = socket.socketpair()
    closed.close()
    with watch.watching(closed, lambda: None) as end:
        end()  # nothing registered, nothing to end, nothing raised
    closed_peer.close()
    a, b = socket.socketpair()
    outer, inner = threading.Event(), threading.Event()
    with watch.watching(a, outer.set):
        with watch.watching(a, inner.set):
            pass  # its end must not end the outer watch
        b.close()
        assert outer.wait(10), "the outer watch stopped with the inner block"
    assert not inner.is_set()
    a.close()


def test_a_request_answered_before_it_is_late_never_enters_the_poll_set():
    """The watch costs a fast request no system call: only the watcher thread touches the poll set,
    and only for requests still waiting after `late_s`."""
    watch = ClientWatch(late_s=60)
    a, b = socket.socketpair()
    gone = threading.Event()
    with watch.watching(a, gone.set):
        b.close()  # a departure during the wait, but the answer came first
    assert not watch._pending and not watch._watched, "a fast request was left in the watch"
    assert not gone.is_set()
    a.close()


def test_a_departure_before_the_request_is_late_is_seen_once_it_is():
    watch = ClientWatch(late_s=0.05)
    a, b = socket.socketpair()
    gone = threading.Event()
    with watch.watching(a, gone.set):
        b.close()  # before the watcher took the socket
        assert gone.wait(10), "the departure was never noticed"
    a.close()
