"""The body cache keeps to its budget (-o cache_size=MB), evicting the
least recently read, and an evicted message still reads exactly."""

import os

import harness


def big_message(i):
    body = ("line %d of a long message to fill the cache\r\n" % i) * 800
    return ("From: a@example.org\r\nTo: b@example.org\r\nSubject: big %d\r\n"
            "Message-ID: <big-%d@convoyfs.test>\r\n\r\n%s" % (i, i, body)).encode()


def cached_bytes(cache_dir):
    total = 0
    for root, _dirs, files in os.walk(os.path.join(cache_dir, "bodies")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def bodies_fetched(m):
    for line in open(os.path.join(m.path, ".convoyfs", "status")):
        if line.startswith("bodies fetched:"):
            return int(line.split(":")[1])
    raise AssertionError("no bodies fetched line")


def test_cache_stays_within_budget(fresh_dovecot, mount):
    d = fresh_dovecot
    msgs = [big_message(i) for i in range(140)]  # about 5 MB in all
    d.append_many("INBOX", [(m, None, ()) for m in msgs])
    m = mount(d, options={"cache_size": "1"})
    inbox = os.path.join(m.path, "INBOX")
    files = sorted(os.listdir(inbox))
    want = {}
    for f in files:
        with open(os.path.join(inbox, f), "rb") as fh:
            want[f] = fh.read()
    assert sorted(want.values()) == sorted(msgs)
    total = sum(len(v) for v in want.values())
    # trimmed every 64 fetches: at most the budget plus one round's worth
    held = cached_bytes(m.cache_dir)
    assert held < total / 2, (held, total)
    assert held <= (1 << 20) + 64 * max(len(v) for v in want.values())
    # the first file was evicted long ago: it is fetched again, exactly
    n = bodies_fetched(m)
    with open(os.path.join(inbox, files[0]), "rb") as fh:
        assert fh.read() == want[files[0]]
    assert bodies_fetched(m) == n + 1


def test_a_mount_checks_its_store_once_and_not_after_an_orderly_stop(fresh_dovecot, mount):
    """PRAGMA quick_check reads the whole database (seconds at a million
    messages): a mount runs it once, when it first opens the store before
    mounting, not again in the daemon. It looks for what a crash left, so
    a remount after an orderly stop spares it, and one after kill -9 runs
    it again."""
    d = fresh_dovecot
    d.append_many("INBOX", [(big_message(i), None, ()) for i in range(3)])
    m = mount(d, debug="store")
    assert m.stderr().count("quick_check of ") == 1, m.stderr()[-3000:]
    assert m.stop() == 0
    db = "%s/cache.db" % os.path.realpath(m.cache_dir)
    m2 = mount(d, name="again", cache_dir=m.cache_dir, debug="store")
    assert "quick_check of " not in m2.stderr(), m2.stderr()[-3000:]
    assert "%s: the last run stopped in order, no quick_check" % db in m2.stderr()
    assert len(os.listdir(os.path.join(m2.path, "INBOX"))) == 3
    m2.proc.kill()
    m2.proc.wait(10)
    m2.stop()
    m3 = mount(d, name="third", cache_dir=m.cache_dir, debug="store")
    assert m3.stderr().count("quick_check of ") == 1, m3.stderr()[-3000:]
    assert "quick_check of %s: ok" % db in m3.stderr()
    assert len(os.listdir(os.path.join(m3.path, "INBOX"))) == 3


def test_a_start_after_an_orderly_stop_spares_the_body_sweep(fresh_dovecot, mount):
    """The sweep that puts the body cache in order after a crash reads the
    name of every body file and every row (seconds at a million bodies):
    a start after an orderly stop skips it, a start after kill -9 runs it,
    and a body left half written by the crash is removed then."""
    d = fresh_dovecot
    d.append_many("INBOX", [(big_message(i), None, ()) for i in range(3)])
    m = mount(d, debug="sync")
    assert "body cache swept in " in m.stderr(), m.stderr()[-3000:]
    inbox = os.path.join(m.path, "INBOX")
    for name in sorted(os.listdir(inbox)):
        with open(os.path.join(inbox, name), "rb") as f:
            f.read()
    assert m.stop() == 0
    assert os.path.exists(os.path.join(m.cache_dir, "clean-stop"))

    m2 = mount(d, name="again", cache_dir=m.cache_dir, debug="sync")
    assert "the last run stopped in order, no sweep" in m2.stderr(), m2.stderr()[-3000:]
    assert "body cache swept in " not in m2.stderr()
    assert not os.path.exists(os.path.join(m.cache_dir, "clean-stop"))
    # what a crash in the middle of a body leaves
    bodydir = os.path.join(m.cache_dir, "bodies")
    sub = sorted(e for e in os.listdir(bodydir) if len(e) == 2)[0]
    tmp = os.path.join(bodydir, sub, ".tmp-1-1-1")
    with open(tmp, "wb") as f:
        f.write(b"half a body")
    m2.proc.kill()
    m2.proc.wait(10)
    m2.stop()
    assert not os.path.exists(os.path.join(m.cache_dir, "clean-stop"))

    m3 = mount(d, name="third", cache_dir=m.cache_dir, debug="sync")
    assert "body cache swept in " in m3.stderr(), m3.stderr()[-3000:]
    assert "1 temporary files removed" in m3.stderr(), m3.stderr()[-3000:]
    assert not os.path.exists(tmp)
    # the bodies cached before the crash still read whole
    names = sorted(os.listdir(os.path.join(m3.path, "INBOX")))
    assert len(names) == 3
    for name in names:
        path = os.path.join(m3.path, "INBOX", name)
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) == os.stat(path).st_size > 0
