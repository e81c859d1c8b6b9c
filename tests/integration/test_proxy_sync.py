"""Sync through a proxy that cuts every connection (proxy.FaultProxy): the
first sync of ~3000 messages and later refreshes, with the connection cut
after 60 000 server->client bytes, or at random points. Once the proxy
lets everything through, the mount must equal the server message for
message (UIDs and flags per folder), and convoyfs must have backed off
meanwhile: at most MAX_LOGINS_PER_MINUTE connections (each one a login)
in any minute of the proxy's log.

The proxy relays the TLS bytes untouched (convoyfs verifies the server's
certificate for 127.0.0.1 through it). Every check of a test is made and
the failures reported together, with the proxy's log, which is also kept
as proxy.log in the test's tmp_path.
"""

import imaplib
import time

import pytest

import harness
import servers
from proxy import FaultProxy
from servers import converge, mount_tree, sync_now

N_MESSAGES = 3000
MAX_LOGINS_PER_MINUTE = 30
POLL = "5"


@pytest.fixture(scope="module")
def big_server():
    """A Dovecot with 3000 generated messages: 2400 in INBOX (a third \\Seen,
    some \\Flagged), 600 in Archive."""
    s = servers.DovecotServer()
    try:
        s.start()
        items = list(harness.genmail.gen_messages(N_MESSAGES, 4242))
        inbox = [(m, w, (("\\Seen",) if i % 3 == 0 else ()) + (("\\Flagged",) if i % 17 == 0 else ()))
                 for i, (m, w) in enumerate(items[:2400])]
        res = s.append_many("INBOX", inbox)
        res += s.append_many("Archive", [(m, w, ()) for m, w in items[2400:]])
        assert not [r for r in res if isinstance(r, Exception)]
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def proxy(big_server, tmp_path):
    p = FaultProxy("127.0.0.1", big_server.port, seed=20240611)
    try:
        yield p
    finally:
        try:
            p.close()
        finally:
            with open(tmp_path / "proxy.log", "w") as f:
                f.write(p.log_text())


def message_count(m):
    tree = mount_tree(m.path)
    return sum(len(v) for v in (tree or {}).values())


def run_for(m, seconds, every=None, action=None):
    """Let the mount work for `seconds` (failing at once if convoyfs exits),
    calling action() every `every` seconds."""
    end = time.monotonic() + seconds
    nxt = time.monotonic() + (every or seconds + 1)
    while time.monotonic() < end:
        if m.proc.poll() is not None:
            raise AssertionError("convoyfs exited with %d:\n%s" % (m.proc.returncode,
                                                                  m.stderr()[-4000:]))
        if action and time.monotonic() >= nxt:
            action()
            nxt += every
        time.sleep(0.5)


def finish(m, s, p, problems, t0):
    """Let everything through, sync, and check the tree and the login rate;
    fail with every problem found."""
    p.passing()
    p.cut_open()  # connections accepted under a cut plan end now
    try:
        sync_now(m)
        converge(m, s, timeout=60, trigger=False,
                 what="the mount to equal the server once the proxy passes everything")
    except (AssertionError, TimeoutError, OSError, RuntimeError, imaplib.IMAP4.error) as e:
        problems.append("final tree: %s: %s" % (type(e).__name__, e))
    rate = p.max_per_minute(since=t0)
    if rate > MAX_LOGINS_PER_MINUTE:
        problems.append("%d connections (logins) in one minute, more than %d: no backoff "
                        "(per minute: %s)" % (rate, MAX_LOGINS_PER_MINUTE, p.per_minute(since=t0)))
    if problems:
        raise AssertionError("\n".join(problems) + "\n--- proxy log (%d connections, last 40):\n%s"
                             % (len(p.connections()),
                                "\n".join(p.log_text().splitlines()[-40:])))


def test_first_sync_through_60kb_cuts(big_server, proxy, mount):
    """Every connection is cut after 60 000 server->client bytes during the
    first sync (60 s, up to 75 s until a message is stored): the sync must
    still make progress (smaller batches, or keep what a cut batch
    brought), the mount must equal the server once the proxy passes
    everything, and reconnects must back off."""
    s, p = big_server, proxy
    p.cut(60_000)
    t0 = time.time()
    m = mount(s, url=p.url(s.user), options={"poll_interval": POLL}, wait_idle=False,
              timeout=10)
    # At least a minute of cuts: the login rate is checked over any
    # minute, and a shorter run would let a backoff too short pass. On
    # to 75 s, as before, only while nothing is stored yet (what is
    # stored stays: the first sync only adds).
    start = time.monotonic()
    run_for(m, 60)
    stored = message_count(m)
    while stored == 0 and time.monotonic() - start < 75:
        run_for(m, min(5, 75 - (time.monotonic() - start)))
        stored = message_count(m)
    problems = []
    if stored == 0:
        problems.append("no message stored after 75 s of connections cut at 60 000 bytes "
                        "(%d connections): a batch never completes" % len(p.connections()))
    cuts = [c for c in p.connections() if c.how == "cut"]
    assert cuts, "the proxy cut nothing: the test would prove nothing\n" + p.log_text()
    finish(m, s, p, problems, t0)


def test_random_cuts_during_first_sync_and_refreshes(big_server, proxy, mount):
    """Connections cut at random points (seeded) during the first sync (40 s;
    8 KB to 600 KB of server->client bytes: a batch of 1000 headers is
    about 400 KB), then during refreshes (20 s; 6 KB to 24 KB: a login
    takes about 5 KB, so a connection lasts a few refreshes; the open ones
    are cut when the phase starts) while a second client appends, flags,
    expunges, creates and renames folders: once the proxy passes everything
    the mount equals the server, and reconnects backed off throughout.

    The refresh phase is 20 s (polls every 5 s and a forced sync, under
    cuts; the two phases still span the minute the login rate is judged
    over): long cuts during refreshes while another client changes
    messages are test_soak.py's (2 minutes, a cut every 5-20 s); this one
    keeps the cuts at byte offsets and the folder create and rename."""
    s, p = big_server, proxy
    p.random_cuts(8_000, 600_000, seed=7)
    t0 = time.time()
    m = mount(s, url=p.url(s.user), options={"poll_interval": POLL}, wait_idle=False,
              timeout=10)
    run_for(m, 40)

    # the second client changes things while the cuts go on
    p.random_cuts(6_000, 24_000, seed=8)
    p.cut_open()
    inbox = sorted(s.snapshot()["INBOX"])
    new = list(harness.genmail.gen_messages(30, 4343))
    s.append_many("INBOX", [(x, w, ()) for x, w in new[:25]])
    s.store_flags("INBOX", inbox[10:30], "+FLAGS", ["\\Flagged", "$Todo"])
    s.store_flags("INBOX", inbox[0:30:3], "-FLAGS", ["\\Seen"])
    s.expunge_uids("INBOX", inbox[100:110])
    s.store_flags("INBOX", inbox[200], "+FLAGS", ["\\Deleted"])
    s.append_many("Projects/Beta", [(x, w, ()) for x, w in new[25:]])
    s.rename("Archive", "Archive 2023")
    run_for(m, 20, every=10, action=lambda: sync_now(m))
    cuts = [c for c in p.connections() if c.how == "cut"]
    assert cuts, "the proxy cut nothing: the test would prove nothing\n" + p.log_text()
    finish(m, s, p, [], t0)
    # and a second look changes nothing
    sync_now(m)
    m.wait_idle(60)
    assert mount_tree(m.path) == servers.server_tree(s)
