"""A server that dies, comes back, or stops answering: reads of mail not
yet cached fail with EIO within the timeout, never hang; cached mail and
listings keep working; the mount recovers when the server is back."""

import errno
import os
import threading
import time

import harness
from test_auth import RecordingRelay

TIMEOUT = 4


def small_server(factory, n=8):
    d = factory()
    items = list(harness.genmail.gen_messages(n, 99))
    d.append_many("INBOX", [(m, w, ()) for m, w in items])
    return d


def files(m):
    inbox = os.path.join(m.path, "INBOX")
    return [os.path.join(inbox, f) for f in sorted(os.listdir(inbox))]


def read_errno(path):
    try:
        with open(path, "rb") as f:
            f.read()
        return 0
    except OSError as e:
        return e.errno


def test_dead_server_gives_eio_and_recovers(dovecot_factory, mount):
    d = small_server(dovecot_factory)
    m = mount(d, timeout=TIMEOUT)
    paths = files(m)
    with open(paths[0], "rb") as f:
        cached = f.read()
    d.stop()

    t0 = time.monotonic()
    assert read_errno(paths[1]) == errno.EIO
    assert time.monotonic() - t0 < 3 * TIMEOUT + 5
    # what is cached or in the store still works
    with open(paths[0], "rb") as f:
        assert f.read() == cached
    assert len(os.listdir(os.path.join(m.path, "INBOX"))) == len(paths)
    os.stat(paths[2])

    d.start()
    # the fetcher connects again on the next read
    harness.wait_until(lambda: read_errno(paths[1]) == 0, 60, interval=0.5,
                       what="a read after the server came back")
    harness.wait_until(lambda: "connection: online" in
                       open(os.path.join(m.path, ".convoyfs", "status")).read(), 90,
                       interval=0.5, what="the sync thread to reconnect")


def test_stalled_server_gives_eio_not_a_hang(dovecot_factory, mount):
    d = small_server(dovecot_factory)
    relay = RecordingRelay(d)
    try:
        m = mount(d, url="imaps://alice@127.0.0.1:%d" % relay.port, timeout=TIMEOUT)
        paths = files(m)
        relay.stall = True
        t0 = time.monotonic()
        assert read_errno(paths[0]) == errno.EIO
        assert time.monotonic() - t0 < 3 * TIMEOUT + 5
        # listing never waits on the network
        t0 = time.monotonic()
        assert len(os.listdir(os.path.join(m.path, "INBOX"))) == len(paths)
        assert time.monotonic() - t0 < 1
        relay.stall = False
        harness.wait_until(lambda: read_errno(paths[0]) == 0, 60, interval=0.5,
                           what="a read once the server answers again")
    finally:
        relay.stall = False
        relay.close()


def test_many_readers_waiting_on_a_stalled_server_leave_listings_free(dovecot_factory, mount):
    """More readers of uncached mail than FUSE has workers (16), all
    waiting on a server that stopped answering: none holds a worker while
    it waits, so listings and the status file still answer at once, and
    each reader gets EIO by its own deadline."""
    d = small_server(dovecot_factory, n=24)
    relay = RecordingRelay(d)
    try:
        m = mount(d, url="imaps://alice@127.0.0.1:%d" % relay.port, timeout=TIMEOUT)
        paths = files(m)
        assert len(paths) == 24
        relay.stall = True
        results = {}

        def reader(p):
            t0 = time.monotonic()
            results[p] = (read_errno(p), time.monotonic() - t0)

        threads = [threading.Thread(target=reader, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        time.sleep(1)  # every open is in, waiting
        assert any(t.is_alive() for t in threads)
        for _ in range(3):
            t0 = time.monotonic()
            assert len(os.listdir(os.path.join(m.path, "INBOX"))) == 24
            with open(os.path.join(m.path, ".convoyfs", "status")) as f:
                assert "state:" in f.read()
            assert time.monotonic() - t0 < 1, "a listing waited behind the readers"
        for t in threads:
            t.join(3 * TIMEOUT + 10)
        assert sorted(e for e, _ in results.values()) == [errno.EIO] * 24, results
        # first come, first served, each by its own deadline
        assert max(s for _, s in results.values()) < 3 * TIMEOUT + 5, results
    finally:
        relay.stall = False
        relay.close()
