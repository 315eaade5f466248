"""ClientWatch in process, over real socket pairs: each watch has its own lock, and only requests
still waiting after `late_s` enter the watcher's poll set (bench/README.md)."""

from __future__ import annotations

import socket
import struct
import threading

from conftest import wait_for

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


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair over loopback TCP (a socketpair is a Unix socket: no FIN, no reset)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def test_a_half_close_is_asked_with_the_probe_and_only_a_close_both_ways_is_a_departure():
    """An end-of-file alone is no departure (RFC 9112 §9.6): the probe goes to the peer, which a
    peer still reading receives, and to which a peer that closed both ways answers with a reset."""
    watch = ClientWatch(late_s=0.001)
    server, reading = tcp_pair()
    server2, closing = tcp_pair()
    stays, leaves = threading.Event(), threading.Event()
    with watch.watching(server, stays.set, b"probe"), watch.watching(server2, leaves.set, b"probe"):
        reading.shutdown(socket.SHUT_WR)
        reading.settimeout(10)
        assert reading.recv(5) == b"probe"  # asked, and still there
        closing.close()
        assert leaves.wait(10), "a peer that closed both ways was not noticed"
        assert not stays.is_set()
        server.sendall(b"the answer")
        assert reading.recv(64) == b"the answer"
    assert not stays.is_set()
    for s in (server, reading, server2):
        s.close()


def test_without_a_probe_a_half_closed_peer_is_gone_only_once_it_resets():
    watch = ClientWatch(late_s=0.001)
    server, client = tcp_pair()
    gone = threading.Event()
    with watch.watching(server, gone.set):
        client.shutdown(socket.SHUT_WR)
        fd = server.fileno()
        wait_for(lambda: fd in watch._watched and watch._watched[fd].half_closed, 10, "the end-of-file read")
        assert not gone.is_set(), "a half-close was taken for a departure"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        assert gone.wait(10), "the reset was not noticed"
    server.close()
