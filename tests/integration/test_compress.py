"""COMPRESS=DEFLATE (RFC 4978, -o compress=yes|no): against a Dovecot with
its imap_zlib plugin, every connection turns compression on after login,
reads, listings and writes work through it byte for byte, and the mail
crosses the wire in a fraction of its bytes; compress=no leaves it off.
(Cyrus offers COMPRESS too, so every test against Cyrus runs compressed.)"""

import os
import re

import pytest

import harness
from proxy import FaultProxy

ZLIB = "protocol imap {\n  mail_plugins = $mail_plugins imap_zlib\n}\n"
COMPRESS = re.compile(r"^\S+ COMPRESS DEFLATE\r?$", re.M)


def message(i):
    body = b"".join(b"line %d of message %d, which compresses well\r\n" % (k, i)
                    for k in range(400))
    return (b"From: a@example.org\r\nSubject: compressed %d\r\n"
            b"Message-ID: <z%d@convoyfs.test>\r\n\r\n" % (i, i)) + body


@pytest.fixture
def zlib_dovecot(dovecot_factory):
    d = dovecot_factory(extra_conf=ZLIB)
    d.append_many("INBOX", [(message(i), None, ()) for i in range(20)])
    return d


def down_bytes(proxy):
    return sum(c.down for c in proxy.connections())


def read_inbox(m):
    inbox = os.path.join(m.path, "INBOX")
    out = []
    for name in sorted(os.listdir(inbox)):
        with open(os.path.join(inbox, name), "rb") as f:
            out.append(f.read())
    return sorted(out)


def test_every_connection_compresses_and_reads_stay_exact(zlib_dovecot, mount):
    d = zlib_dovecot
    proxy = FaultProxy("127.0.0.1", d.port)
    try:
        m = mount(d, url=proxy.url(user=d.user))
        before = down_bytes(proxy)
        msgs = sorted(message(i) for i in range(20))
        assert read_inbox(m) == msgs
        crossed = down_bytes(proxy) - before
        # 20 bodies of ~19 KB each crossed in a small part of their size
        assert crossed < sum(map(len, msgs)) / 4, (crossed, sum(map(len, msgs)))
        # a write and a flag change through the compressed session
        inbox = os.path.join(m.path, "INBOX")
        first = sorted(os.listdir(inbox))[0]
        os.setxattr(os.path.join(inbox, first), "user.convoyfs.flags", b"\\Flagged")
        os.rename(os.path.join(inbox, first), os.path.join(m.path, "Trash", first))

        def trash():
            with d.imap() as c:
                c.select("Trash", readonly=True)
                typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
                assert typ == "OK"
                return [item for item in data if isinstance(item, tuple)]
        harness.wait_until(lambda: trash(), 30, interval=0.2, what="the move on the server")
        moved = trash()
        assert len(moved) == 1 and moved[0][1] in msgs
        assert b"\\Flagged" in moved[0][0]
        m.stop()
    finally:
        proxy.close()
    # each of the mount's sessions (sync, watcher, fetchers) asked for it
    sessions = [s[1] for s in d.rawlog_sessions()]
    assert len(sessions) >= 3
    assert all(COMPRESS.search(s) for s in sessions), [s[:200] for s in sessions]


def test_compress_no_leaves_it_off(zlib_dovecot, mount):
    d = zlib_dovecot
    m = mount(d, options={"compress": "no"})
    assert read_inbox(m) == sorted(message(i) for i in range(20))
    m.stop()
    text = d.rawlog_text()
    assert "UID FETCH" in text and not COMPRESS.search(text)
