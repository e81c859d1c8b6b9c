"""Prefetch (-o prefetch=all|recent:DAYS|none): after the first sync the
bodies come in the background, newest first, INBOX first, many a command
on a connection of their own, within nine tenths of cache_size; every
byte is the server's, and reading them afterwards costs no fetch."""

import datetime as dt
import errno
import os
import re

import pytest

import harness
import test_body_checks

FETCH_BODY = re.compile(r"UID FETCH (\S+) \(UID BODY\.PEEK\[\]\)", re.I)


def message(folder, i, size=600):
    body = ("%s line %d of message %d\r\n" % (folder, i, i)) * (size // 30 + 1)
    return ("From: a@example.org\r\nTo: b@example.org\r\nSubject: %s %d\r\n"
            "Message-ID: <pf-%s-%d@convoyfs.test>\r\n\r\n%s"
            % (folder, i, folder, i, body)).encode()


def status_counts(m):
    cached = m.status_field("bodies cached")
    a, b = cached.split("/")
    return int(a), int(b)


def wait_prefetched(m, want, timeout=60):
    def done():
        return status_counts(m)[0] >= want and m.status_field("prefetch") == "done"
    try:
        harness.wait_until(done, timeout, interval=0.1, what="prefetch done")
    except TimeoutError:
        raise AssertionError("prefetch not done:\n" + m.status()) from None


def server_bodies(d, folder):
    """{uid: bytes} of folder, read with a second client."""
    with d.imap() as c:
        c.select(folder if folder == "INBOX" else harness.mutf7_encode(folder),
                 readonly=True)
        typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[])")
        assert typ == "OK"
        out = {}
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                out[uid] = item[1]
        return out


def read_folder(m, folder):
    d = os.path.join(m.path, folder)
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out.append(f.read())
    return sorted(out)


def test_every_body_comes_in_few_commands_newest_and_inbox_first(fresh_dovecot, mount):
    d = fresh_dovecot
    d.append_many("INBOX", [(message("INBOX", i), None, ()) for i in range(300)])
    d.append_many("Archive", [(message("Archive", i), None, ()) for i in range(120)])
    mark = d.rawlog_mark()
    m = mount(d, options={"prefetch": "all"})
    wait_prefetched(m, 420)
    assert status_counts(m) == (420, 420)
    assert int(m.status_field("bodies prefetched")) == 420

    text = d.rawlog_text(mark)
    sets = [FETCH_BODY.search(l).group(1) for l in harness.commands(text, FETCH_BODY)]
    # a set of UIDs a command (one per folder here), not one per message
    assert sets == ["1:300", "1:120"], sets
    # on a connection of its own, INBOX first
    sessions = [s[1] for s in d.rawlog_sessions(mark) if FETCH_BODY.search(s[1])]
    assert len(sessions) == 1
    picks = re.findall(r'(?im)^\S+ (?:EXAMINE|SELECT) "?([^"\s]+)"?|(UID FETCH \S+ \(UID BODY)',
                       sessions[0])
    assert [a or "FETCH" for a, b in picks] == ["INBOX", "FETCH", "Archive", "FETCH"], picks

    # exactly the server's bytes, and reading them fetches nothing
    for folder in ("INBOX", "Archive"):
        assert read_folder(m, folder) == sorted(server_bodies(d, folder).values())
    assert m.bodies_fetched() == 0


def test_prefetch_keeps_within_the_cache_budget(fresh_dovecot, mount):
    d = fresh_dovecot
    msgs = [message("INBOX", i, size=40000) for i in range(100)]  # about 4 MB
    d.append_many("INBOX", [(x, None, ()) for x in msgs])
    m = mount(d, options={"prefetch": "all", "cache_size": "1"})
    harness.wait_until(lambda: m.status_field("prefetch") == "paused: the cache is full",
                       60, what="prefetch paused")
    cached, total = status_counts(m)
    assert 0 < cached < total == 100
    files = [os.path.join(r, f)
             for r, _, fs in os.walk(os.path.join(m.cache_dir, "bodies")) for f in fs]
    held = sum(os.path.getsize(f) for f in files)
    # nine tenths of the budget, and at most one message over
    assert held <= (1 << 20) * 9 // 10 + 45000, held
    # the newest first: the cached ones are the highest UIDs (a file's
    # inode number is its message's umid, the cache's file name too)
    umids = {int(os.path.basename(f)) for f in files}
    assert len(umids) == cached
    inbox = os.path.join(m.path, "INBOX")
    uids = {}
    for name in os.listdir(inbox):
        p = os.path.join(inbox, name)
        uids[os.stat(p).st_ino] = int(os.getxattr(p, "user.convoyfs.uid"))
    assert sorted(uids[u] for u in umids) == list(range(101 - cached, 101))
    # what it left still reads, from the server
    assert read_folder(m, "INBOX") == sorted(msgs)
    assert m.bodies_fetched() > 0


def test_recent_days_brings_only_recent_mail(fresh_dovecot, mount):
    d = fresh_dovecot
    now = dt.datetime.now(dt.timezone.utc)
    old = now - dt.timedelta(days=400)
    d.append_many("INBOX", [(message("old", i), old, ()) for i in range(20)] +
                  [(message("new", i), now - dt.timedelta(days=2), ()) for i in range(15)])
    m = mount(d, options={"prefetch": "recent:30"})
    wait_prefetched(m, 15)
    assert status_counts(m) == (15, 35)
    names = sorted(os.listdir(os.path.join(m.path, "INBOX")))
    n = m.bodies_fetched()
    for name in names:
        with open(os.path.join(m.path, "INBOX", name), "rb") as f:
            f.read()
    # the 20 old ones come when opened, the 15 recent were there
    assert m.bodies_fetched() == n + 20


def test_new_mail_is_prefetched_and_none_fetches_nothing(fresh_dovecot, mount):
    d = fresh_dovecot
    d.append_many("INBOX", [(message("INBOX", i), None, ()) for i in range(10)])
    m = mount(d, options={"prefetch": "all"})
    wait_prefetched(m, 10)
    d.append_many("INBOX", [(message("INBOX", i), None, ()) for i in range(10, 15)])
    harness.wait_until(lambda: status_counts(m) == (15, 15), 30, what="new mail prefetched")
    assert read_folder(m, "INBOX") == sorted(server_bodies(d, "INBOX").values())
    assert m.bodies_fetched() == 0

    off = mount(d, name="off", options={"prefetch": "none"})
    assert off.status_field("prefetch") == "off"
    assert off.status_field("bodies prefetched") == "0"
    assert not any(files for _, _, files in os.walk(os.path.join(off.cache_dir, "bodies")))


@pytest.fixture
def lying():
    made = []

    def make(how):
        s = test_body_checks.Lying()
        s.how = how
        for i in range(1, 4):
            s.add("INBOX", test_body_checks.body(i))
        made.append(s)
        return s
    yield make
    for s in made:
        s.cleanup()


@pytest.mark.parametrize("how", ["other-uid", "header", "two-bodies", "two-in-one"])
def test_a_set_fetch_keeps_only_what_the_server_sent_for_each_uid(lying, mount, how):
    """One UID FETCH 1:3 answered with another UID's body for UID 1, with
    BODY[HEADER], with an extra body, or with two bodies in one response:
    each body is kept for the UID its response names, once, whole."""
    s = lying(how)
    m = mount(s, options={"prefetch": "all"})
    harness.wait_until(lambda: m.status_field("prefetch") == "done", 30,
                       what="prefetch done")
    assert "prefetch: a FETCH response in INBOX refused" in m.stderr(), m.stderr()[-2000:]
    f = test_body_checks.files(m)
    # UID 1's own body came only where one response held it alone
    want_cached = 3 if how == "two-bodies" else 2
    assert status_counts(m) == (want_cached, 3)
    fetched = m.bodies_fetched()
    for uid in (2, 3):
        with open(f[uid], "rb") as fh:
            assert fh.read() == s.folders["INBOX"][uid - 1].data
    if how == "two-bodies":
        with open(f[1], "rb") as fh:
            assert fh.read() == s.folders["INBOX"][0].data
    else:
        with pytest.raises(OSError) as e:
            with open(f[1], "rb") as fh:
                fh.read()
        assert e.value.errno == errno.EIO
    # the two others were read from the cache
    assert m.bodies_fetched() == fetched
