"""The fault proxy itself (proxy.py): it relays an imaplib session over TLS
untouched, cuts connections where it is told, stalls, refuses, and logs
every connection."""

import contextlib
import imaplib
import socket
import ssl
import time

import pytest

import harness
from proxy import FaultProxy


def _client(d, proxy, timeout=10):
    return imaplib.IMAP4_SSL("127.0.0.1", proxy.port, ssl_context=d.ssl_context(),
                             timeout=timeout)


@pytest.fixture
def small(fresh_dovecot):
    d = fresh_dovecot
    items = list(harness.genmail.gen_messages(40, 3))
    d.append_many("INBOX", [(m, w, ()) for m, w in items])
    return d


def test_pass_relays_a_session(small):
    d = small
    with FaultProxy("127.0.0.1", d.port) as p:
        c = _client(d, p)
        c.login(d.user, d.password)
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == 40
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        c.logout()
        harness.wait_until(lambda: not p.open_connections(), 5, what="the connection to end")
        [conn] = p.connections()
        assert conn.how in ("client closed", "server closed")
        assert conn.up > 100 and conn.down > 40 * 500
        assert p.max_per_minute() == 1


def test_cut_after_n_bytes(small):
    d = small
    with FaultProxy("127.0.0.1", d.port, mode="cut", cut_after=20_000) as p:
        c = _client(d, p)
        c.login(d.user, d.password)
        c.select("INBOX", readonly=True)
        with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
            c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        with contextlib.suppress(Exception):
            c.shutdown()
        harness.wait_until(lambda: not p.open_connections(), 5, what="the cut")
        [conn] = p.connections()
        assert conn.how == "cut" and conn.down == 20_000
        # switched at run time: the next connection passes
        p.passing()
        c = _client(d, p)
        c.login(d.user, d.password)
        c.select("INBOX", readonly=True)
        assert c.uid("FETCH", "1:*", "(BODY.PEEK[])")[0] == "OK"
        c.logout()


def test_random_cuts_are_seeded_and_in_range(small):
    d = small
    budgets = []
    for _ in range(2):
        with FaultProxy("127.0.0.1", d.port, mode="random", random_range=(6_000, 30_000),
                        seed=42) as p:
            for _ in range(3):
                c = _client(d, p)
                c.login(d.user, d.password)
                c.select("INBOX", readonly=True)
                with pytest.raises((imaplib.IMAP4.abort, OSError, ssl.SSLError)):
                    c.uid("FETCH", "1:*", "(BODY.PEEK[])")
                with contextlib.suppress(Exception):
                    c.shutdown()
            harness.wait_until(lambda: not p.open_connections(), 5, what="the cuts")
            conns = p.connections()
            assert [c.how for c in conns] == ["cut"] * 3
            assert all(6_000 <= c.down == c.budget <= 30_000 for c in conns)
            budgets.append([c.budget for c in conns])
    assert budgets[0] == budgets[1]


def test_stall_and_refuse(small):
    d = small
    with FaultProxy("127.0.0.1", d.port) as p:
        c = _client(d, p, timeout=3)
        c.login(d.user, d.password)
        p.stall()
        t0 = time.monotonic()
        with pytest.raises((socket.timeout, TimeoutError, OSError, imaplib.IMAP4.abort)):
            c.select("INBOX")
        assert time.monotonic() - t0 < 10
        with pytest.raises((socket.timeout, TimeoutError, ssl.SSLError, OSError)):
            _client(d, p, timeout=2)  # a new connection gets no handshake
        p.refuse()
        with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
            _client(d, p, timeout=5)
        p.passing()
        c2 = _client(d, p)
        c2.login(d.user, d.password)
        c2.logout()
        hows = [x.how for x in p.connections()]
        assert "refused" in hows
        assert p.max_per_minute() == 4
        assert len(p.connections_since(time.time() + 1)) == 0
        assert "refused" in p.log_text()
    # closed: every thread joined, the port no longer answers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
