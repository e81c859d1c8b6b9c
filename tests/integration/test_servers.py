"""The test servers themselves (servers.py): each kind starts on 127.0.0.1,
takes LOGIN over TLS verified with its own CA, LISTs, APPENDs, acts as the
second client, and stops leaving no process behind. Also what makes Cyrus
and imap4d differ from Dovecot, so a change in their set-up shows here."""

import imaplib
import os
import ssl
import time

import pytest

import harness
import servers


def _skip_if_missing(kind):
    why = servers.missing(kind)
    if why:
        pytest.skip("%s: %s" % (kind, why))


@pytest.mark.parametrize("kind", servers.KINDS)
def test_starts_logs_in_lists_appends_and_stops(kind):
    _skip_if_missing(kind)
    s = servers.make(kind)
    try:
        t0 = time.monotonic()
        s.start()
        assert time.monotonic() - t0 < 20
        assert s.kind == kind
        pids = ([s.master_pid() or s.proc.pid] if hasattr(s, "master_pid")
                else s.processes())
        assert pids and all(servers.pid_alive(p) for p in pids)
        # LOGIN over TLS that verifies the throwaway CA
        with s.session() as c:
            assert c.state == "AUTH"
            assert isinstance(c.sock, ssl.SSLSocket)
            assert c.sock.getpeercert()  # verified: the context has CERT_REQUIRED
            typ, data = c.list('""', "*")
            assert typ == "OK"
        names = [n for n, *_ in s.list_folders()]
        assert "INBOX" in names
        items = list(harness.genmail.gen_messages(3, 7))
        s.append_many("INBOX", [(m, w, ()) for m, w in items])
        s.append_many("Lists/dev", [(m, w, ()) for m, w in items[:2]])
        snap = s.snapshot()
        assert len(snap["INBOX"]) == 3
        assert len(snap["Lists/dev"]) == 2
        bodies = s.bodies("INBOX")
        assert sorted(bodies.values()) == sorted(m for m, _ in items)
        # the password_command prints the password
        out = os.popen(s.password_command()).read().splitlines()[0]
        assert out == s.password
        assert "@127.0.0.1:%d" % s.port in s.url()
    finally:
        s.stop()
    for p in pids:
        assert not servers.pid_alive(p), "pid %d is still there after stop()" % p
    s.cleanup()
    assert not os.path.exists(s.dir)


@pytest.mark.parametrize("kind", ["cyrus", "imap4d"])
def test_certificate_is_verified(kind):
    """A client trusting another CA is refused: the TLS really is verified."""
    _skip_if_missing(kind)
    with servers.make(kind) as s:
        other = harness.CA(s.pki, "other")
        ctx = ssl.create_default_context(cafile=other.cert)
        with pytest.raises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL("127.0.0.1", s.port, ssl_context=ctx, timeout=10)
        with pytest.raises(imaplib.IMAP4.error):
            c = imaplib.IMAP4_SSL("127.0.0.1", s.port, ssl_context=s.ssl_context(), timeout=10)
            try:
                c.login(s.user, "wrong password")
            finally:
                c.shutdown()


@pytest.mark.parametrize("kind", servers.KINDS)
def test_second_client_helpers(kind):
    """rename, delete, store_flags, expunge_uids and the snapshot oracle."""
    _skip_if_missing(kind)
    with servers.make(kind) as s:
        items = list(harness.genmail.gen_messages(4, 8))
        s.append_many("INBOX", [(m, w, ()) for m, w in items])
        s.append_many("Old", [(m, w, ()) for m, w in items[:1]])
        uids = sorted(s.snapshot()["INBOX"])
        kw = ["$Work"] if s.allows_keywords() else []
        s.store_flags("INBOX", uids[0], "+FLAGS", ["\\Flagged", "\\Seen"] + kw)
        assert s.snapshot()["INBOX"][uids[0]] == {"\\Flagged", "\\Seen", *kw}
        s.store_flags("INBOX", uids[0], "-FLAGS", ["\\Seen"])
        assert s.snapshot()["INBOX"][uids[0]] == {"\\Flagged", *kw}
        s.expunge_uids("INBOX", [uids[1], uids[2]])
        assert sorted(s.snapshot()["INBOX"]) == [uids[0], uids[3]]
        s.rename("Old", "Older")
        snap = s.snapshot()
        assert "Old" not in snap and len(snap["Older"]) == 1
        s.delete("Older")
        assert "Older" not in s.snapshot()
        # a message flagged \Deleted is left out of the oracle unless asked for
        s.store_flags("INBOX", uids[3], "+FLAGS", "\\Deleted")
        assert uids[3] not in s.snapshot()["INBOX"]
        assert "\\Deleted" in s.snapshot(include_deleted=True)["INBOX"][uids[3]]
        tree = servers.server_tree(s)
        assert set(tree["INBOX"]) == {uids[0]}


def test_cyrus_differs_from_dovecot():
    """Lower-case special-use, UIDVALIDITY as a Unix time, a parent made a
    real mailbox by CREATE of its child, and the server's extensions."""
    _skip_if_missing("cyrus")
    with servers.Cyrus() as s:
        caps = s.capabilities()
        for cap in ("OBJECTID", "QRESYNC", "CONDSTORE", "LIST-STATUS", "SPECIAL-USE", "MOVE",
                    "UIDPLUS", "IDLE", "ESEARCH"):
            assert cap in caps
        folders = {n: f for n, _r, _d, f in s.list_folders()}
        assert "\\sent" in folders["Sent"] and "\\trash" in folders["Trash"]
        with s.session() as c:
            typ, data = c.status("INBOX", "(UIDVALIDITY)")
            uidvalidity = int(data[0].split(b"UIDVALIDITY ")[1].rstrip(b")"))
        assert abs(uidvalidity - time.time()) < 86400
        s.create("Lists/dev")
        sel = s.selectable()
        assert "Lists" in sel and "Lists/dev" in sel


def test_imap4d_differs_from_dovecot():
    """INBOX with a NIL delimiter and \\NoInferiors, \\NoSelect parents, no
    keywords, and a small set of extensions."""
    _skip_if_missing("imap4d")
    with servers.Imap4d() as s:
        assert s.user == "alice@localhost"
        assert "alice%40localhost@127.0.0.1" in s.url()
        s.create("Lists/dev")
        folders = {n: (d, f) for n, _r, d, f in s.list_folders()}
        assert folders["INBOX"] == (None, ["\\NoInferiors"])
        assert folders["Lists"][1] == ["\\NoSelect"]
        assert "Lists" not in s.selectable()
        assert not s.allows_keywords()
        caps = s.capabilities()
        assert "IDLE" in caps and "UIDPLUS" not in caps and "CONDSTORE" not in caps
