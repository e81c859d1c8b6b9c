"""A body FETCH reply is checked before it is cached, and a body's real
length wins over RFC822.SIZE: against a scripted server that answers
UID FETCH n BODY.PEEK[] with another UID's body, with BODY[HEADER], or
with two bodies, and that says RFC822.SIZE larger, smaller or 0. The
mount never serves bytes the server did not send for that message, and
cat, cp and mmap return exactly the server's bytes."""

import contextlib
import errno
import mmap
import os
import re
import shutil
import sqlite3
import subprocess
import time

import pytest

import harness
import scripted


def body(i, extra=b""):
    return (b"From: a@b.test\r\nMessage-ID: <m%d@scripted.test>\r\n"
            b"Subject: message %d\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n"
            b"body of message %d\r\n" % (i, i, i)) + extra


class Lying(scripted.ScriptedImap):
    """Lies about UID 1's body in the way named by how."""

    how = None

    def body_reply(self, folder, seq, m):
        if m.uid != 1:
            return super().body_reply(folder, seq, m)
        other = self.folders[folder][1]
        if self.how == "other-uid":
            return [b"* %d FETCH (UID %d BODY[] " % (seq, other.uid) +
                    scripted.literal(other.data) + b")\r\n"]
        if self.how == "header":
            head = m.data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            return [b"* %d FETCH (UID 1 BODY[HEADER] " % seq + scripted.literal(head) + b")\r\n"]
        if self.how == "two-bodies":
            return (super().body_reply(folder, seq, m) +
                    [b"* 2 FETCH (UID %d BODY[] " % other.uid +
                     scripted.literal(other.data) + b")\r\n"])
        if self.how == "two-in-one":
            return [b"* %d FETCH (UID 1 BODY[] " % seq + scripted.literal(m.data) +
                    b" BODY[] " + scripted.literal(other.data) + b")\r\n"]
        raise AssertionError(self.how)


@pytest.fixture
def lying():
    made = []

    def make(how):
        s = Lying()
        s.how = how
        for i in range(1, 4):
            s.add("INBOX", body(i))
        made.append(s)
        return s
    yield make
    for s in made:
        s.cleanup()


def files(m):
    d = os.path.join(m.path, "INBOX")
    out = {}
    for n in os.listdir(d):
        uid = int(os.getxattr(os.path.join(d, n), "user.convoyfs.uid"))
        out[uid] = os.path.join(d, n)
    return out


@pytest.mark.parametrize("how", ["other-uid", "header", "two-bodies", "two-in-one"])
def test_a_body_the_server_did_not_send_for_it_is_refused(lying, mount, how):
    s = lying(how)
    m = mount(s)
    f = files(m)
    assert sorted(f) == [1, 2, 3]
    for _ in range(2):  # and not cached on a second try either
        with pytest.raises(OSError) as e:
            with open(f[1], "rb") as fh:
                fh.read()
        assert e.value.errno == errno.EIO, how
    assert "the body of UID 1 in INBOX refused" in m.stderr(), m.stderr()[-2000:]
    # the mount stays usable, the other messages whole
    for uid in (2, 3):
        with open(f[uid], "rb") as fh:
            assert fh.read() == s.folders["INBOX"][uid - 1].data
    # nothing of UID 1 was kept in the body cache: two bodies in it
    assert m.bodies_fetched() == 2
    on_disk = [n for _d, _s, names in os.walk(m.cache_dir) for n in names
               if re.fullmatch(r"\d+", n)]
    assert len(on_disk) == 2, on_disk


@pytest.mark.parametrize("said", ["larger", "smaller", "zero"])
def test_real_length_wins_over_rfc822_size(mount, tmp_path, said):
    s = scripted.ScriptedImap()
    try:
        msgs = [s.add("INBOX", body(i, extra=b"x" * 150)) for i in range(1, 4)]
        for m_ in msgs:
            real = len(m_.data)
            m_.size = {"larger": real + 100, "smaller": real - 60, "zero": 0}[said]
        m = mount(s)
        f = files(m)
        # before a fetch st_size is what the server said, at no cost
        assert os.stat(f[1]).st_size == msgs[0].size
        # cat: every byte, whatever SIZE said
        with open(f[1], "rb") as fh:
            assert fh.read() == msgs[0].data
        assert os.stat(f[1]).st_size == len(msgs[0].data)
        # cp of a message not fetched yet
        shutil.copyfile(f[2], str(tmp_path / "copy"))
        assert (tmp_path / "copy").read_bytes() == msgs[1].data
        # mmap of the third
        with open(f[3], "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    got = bytes(mm[:])
            else:
                got = fh.read()
        assert got == msgs[2].data, (len(got), len(msgs[2].data))
        assert os.stat(f[3]).st_size == len(msgs[2].data)
        assert re.search(r"the server said \d+ bytes and sent \d+", m.stderr())
        m.stop()
        # the real length outlives the mount
        m2 = mount(s, name="again", cache_dir=m.cache_dir)
        assert os.stat(files(m2)[1]).st_size == len(msgs[0].data)
    finally:
        s.cleanup()


class HugeHeader(scripted.ScriptedImap):
    """UID 2's header fields come as a literal announcing 2^31 bytes, of
    which `send` are sent before the connection is closed, or as a
    literal of `send` bytes sent whole."""

    announce = 2 ** 31
    send = 300 * 2 ** 20
    sent = 0

    def meta_reply(self, folder, seq, m, items):
        if m.uid != 2 or "HEADER.FIELDS" not in items:
            return super().meta_reply(folder, seq, m, items)
        server = self

        def stream():
            size = self.announce or self.send
            yield (b'* %d FETCH (UID 2 FLAGS () INTERNALDATE "%s" RFC822.SIZE %d '
                   b"BODY[HEADER.FIELDS (SUBJECT)] {%d}\r\n"
                   % (seq, scripted.imap_date(m.date), len(m.data), size))
            chunk = b"Subject: " + b"x" * (2 ** 20 - 11) + b"\r\n"
            for _ in range(self.send // len(chunk)):
                server.sent += len(chunk)
                yield chunk
            if self.announce:
                raise ConnectionAbortedError
            yield b")\r\n"
        return [stream()]


def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))


@pytest.mark.parametrize("announce", [True, False], ids=["2^31-cut", "300MB-whole"])
def test_a_huge_header_literal_costs_no_memory(mount, announce):
    """300 MB streamed into one header-fields literal: memory stays
    bounded (the fields are kept up to 256 KiB, the rest is read and
    dropped), the mount stays usable, and a clear line is logged."""
    s = HugeHeader()
    s.announce = HugeHeader.announce if announce else 0
    try:
        for i in range(1, 4):
            s.add("INBOX", body(i))
        m = mount(s, wait_idle=False)
        harness.wait_until(lambda: s.sent >= s.send - 2 ** 20, 120, interval=0.2,
                           what="the server to stream the literal")
        if not announce:
            m.wait_idle(120)
            assert sorted(files(m)) == [1, 2, 3]
            assert "header fields of %d bytes" % s.send in m.stderr()
        else:
            harness.wait_until(lambda: "connection lost" in m.stderr(), 30, interval=0.2,
                               what="the cut to be noticed")
            # the mount stays up and answers (the batch holding UID 2
            # is cut each time, so nothing of it is stored yet)
            assert m.proc.poll() is None
            assert re.search(r"(?m)^connection: ", m.status())
            os.listdir(os.path.join(m.path, "INBOX"))
        peak = peak_rss_kib(m.proc.pid)
        # a build with sanitizers carries their own memory: the bound is
        # what 300 MB held would blow through, not a tight figure
        assert peak < 150 * 1024, "peak RSS %d MiB" % (peak // 1024)
    finally:
        s.cleanup()


def test_no_uidnext_costs_no_refetch_at_each_poll(mount):
    """A server that never says UIDNEXT (in EXAMINE or STATUS): after the
    first sync, polls fetch at most the newest message again, never the
    folder; new mail is still found."""
    s = scripted.ScriptedImap(say_uidnext=False)
    try:
        for i in range(1, 41):
            s.add("INBOX", body(i))
        m = mount(s, options={"poll_interval": "1"})
        assert len(files(m)) == 40
        start = len(s.commands)
        time.sleep(4.5)
        polls = [c for c in s.commands[start:] if re.search(r"(?i)^\S+ STATUS ", c)]
        assert len(polls) >= 3, s.commands[start:]
        fetches = [c for c in s.commands[start:] if re.search(r"(?i)\bFETCH\b", c)]
        # each poll may ask UID FETCH <uidnext>:* (the server must answer
        # with its last message), never a range of the folder
        assert all(re.search(r"(?i)UID FETCH 41:\* ", c) for c in fetches), fetches
        s.add("INBOX", body(41))
        harness.wait_until(lambda: len(files(m)) == 41, 15, interval=0.2,
                           what="new mail without UIDNEXT")
    finally:
        s.cleanup()


def test_full_cache_disk_says_enospc_and_recovers(mount, tmp_path):
    """The cache directory on a 2 MB tmpfs, filled up after the first
    sync: a read of mail not cached fails with ENOSPC (not EIO), the
    status file says why, the store stays intact, and reads work again
    once there is room."""
    cache = tmp_path / "small"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(cache)],
                   check=True)
    s = scripted.ScriptedImap()
    try:
        msgs = [s.add("INBOX", body(i, extra=b"y" * 200_000)) for i in range(1, 4)]
        m = mount(s, cache_dir=str(cache / "c"))
        f = files(m)
        filler = cache / "filler"
        with open(filler, "wb") as fh:
            with pytest.raises(OSError) as e:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as e:
            with open(f[1], "rb") as fh:
                fh.read()
        assert e.value.errno == errno.ENOSPC, e.value
        assert re.search(r"(?m)^last error: no space left for bodies in ", m.status())
        os.unlink(filler)
        with open(f[1], "rb") as fh:
            assert fh.read() == msgs[0].data
        m.stop()
        con = sqlite3.connect(str(cache / "c" / "cache.db"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    finally:
        s.cleanup()
        subprocess.run(["umount", "-l", str(cache)], check=False)


def fill(path, leave=0):
    """Fill the file system of @path with a file at @path, then give back
    @leave bytes of it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as e:
            while True:
                os.write(fd, b"\0" * 65536)
        assert e.value.errno == errno.ENOSPC
        # the last blocks a byte at a time, so the disk is full indeed
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)
    if leave:
        os.truncate(path, max(0, os.path.getsize(path) - leave))


def test_full_disk_during_the_first_sync_is_said_and_recovers(mount, tmp_path):
    """The store's own disk fills during the first sync (the cache on a
    2 MB tmpfs with 300 kB free, 3000 messages to learn): the folder's
    status line and the last error say so, the log says it once, nothing
    crashes; when space returns the sync finishes without waiting for the
    next poll, and PRAGMA integrity_check is ok."""
    # the tmpfs is the cache directory itself: the daemon's stderr is kept
    # beside it, where there is room
    cache = tmp_path / "small" / "c"
    cache.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(cache)],
                   check=True)
    s = scripted.ScriptedImap()
    try:
        msgs = [s.add("INBOX", body(i)) for i in range(1, 3001)]
        filler = cache / "filler"
        fill(filler, leave=300_000)
        m = mount(s, cache_dir=str(cache), wait_idle=False,
                  options={"poll_interval": "3600"})
        harness.wait_until(
            lambda: re.search(r"(?m)^folder INBOX: .*failed: refresh: No space left on device",
                              m.status()), 120, interval=0.2, what="the folder failing")
        assert re.search(r"(?m)^last error: no space left for the store in ", m.status())
        assert m.stderr().count("folder INBOX: refresh: No space left on device") == 1
        os.unlink(filler)
        m.wait_idle(90)
        assert re.search(r"(?m)^folder INBOX: 3000/3000 messages, complete$", m.status()), \
            m.status()
        f = files(m)
        assert len(f) == 3000
        with open(f[1], "rb") as fh:
            assert fh.read() == msgs[0].data
        assert m.stop() == 0
        con = sqlite3.connect(str(cache / "cache.db"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    finally:
        s.cleanup()
        subprocess.run(["umount", "-l", str(cache)], check=False)


def test_uid_4294967295_does_not_wrap_the_bookmark(mount):
    """The highest UID there is: UIDNEXT would be 2^32, which does not
    fit. A refresh asks for new mail from that UID on, never learns the
    folder again from the start."""
    s = scripted.ScriptedImap(say_uidnext=False)
    try:
        for i, uid in enumerate((1, 2, 4294967295), 1):
            s.add("INBOX", body(i), uid=uid)
        m = mount(s)
        assert sorted(files(m)) == [1, 2, 4294967295]
        start = len(s.commands)
        for _ in range(2):
            with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
                f.write("sync\n")
            m.wait_idle(30)
        after = s.commands[start:]
        assert any(re.search(r"(?i)^\S+ EXAMINE ", c) for c in after), after
        # no first look again (a FETCH by sequence number), no range
        # from 1 for new mail
        assert not any(re.search(r"(?i)^\S+ FETCH ", c) for c in after), after
        new = [c for c in after if re.search(r"(?i)UID FETCH \d+:\* ", c)]
        assert new and all("4294967295:*" in c for c in new), after
        assert sorted(files(m)) == [1, 2, 4294967295]
        with open(files(m)[4294967295], "rb") as fh:
            assert fh.read() == s.folders["INBOX"][2].data
    finally:
        s.cleanup()


class ByeMidFetch(scripted.ScriptedImap):
    """Every FETCH that reaches INBOX's UID 2 is cut in the middle: the
    server says BYE and closes the connection."""

    def meta_reply(self, folder, seq, m, items):
        if folder != "INBOX" or m.uid != 2:
            return super().meta_reply(folder, seq, m, items)

        def cut():
            yield b"* %d FETCH (UID 2 FLAGS () " % seq
            yield b"\r\n* BYE going away\r\n"
            raise ConnectionAbortedError
        return [cut()]


def test_a_folder_that_breaks_every_connection_does_not_starve_the_others(mount):
    """INBOX, refreshed first, holds a message whose FETCH always ends in
    BYE: after the first loss it goes last, so the other folders are
    learned; the mount stays up and says what failed."""
    s = ByeMidFetch()
    try:
        for i in range(1, 4):
            s.add("INBOX", body(i))
            s.add("Other", body(10 + i))
        m = mount(s, wait_idle=False)
        d = os.path.join(m.path, "Other")
        harness.wait_until(lambda: os.path.isdir(d) and len(os.listdir(d)) == 3, 60,
                           interval=0.2, what="Other learned despite INBOX")
        with open(os.path.join(d, sorted(os.listdir(d))[0]), "rb") as fh:
            assert fh.read().startswith(b"From: a@b.test")
        assert re.search(r"(?m)^connection: ", m.status())
        assert "connection lost" in m.stderr()
    finally:
        s.cleanup()


class Trickle(scripted.ScriptedImap):
    """UID 1's body comes a byte a second: each read gets something well
    within the timeout, the reply never ends in it."""

    def body_reply(self, folder, seq, m):
        if m.uid != 1:
            return super().body_reply(folder, seq, m)

        def slow():
            yield b"* %d FETCH (UID 1 BODY[] {%d}\r\n" % (seq, len(m.data))
            for i in range(len(m.data)):
                time.sleep(1)
                yield m.data[i:i + 1]
            yield b")\r\n"
        return [slow()]

    def _serve(self, f):
        # flush after every chunk, so the trickle reaches the client
        class Flushing:
            def __init__(self, f):
                self.f = f

            def write(self, b):
                self.f.write(b)
                self.f.flush()

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __iter__(self):
                return iter(self.f)
        return super()._serve(Flushing(f))


def test_a_trickling_server_cannot_hold_a_read_for_ever(mount):
    """With timeout=3, a body sent a byte a second fails the read with
    EIO within a few seconds (the reply must bring 1 KiB per timeout or
    be whole), not after the 200 s the trickle would take; the mount
    stays usable."""
    s = Trickle()
    try:
        for i in range(1, 3):
            s.add("INBOX", body(i))
        m = mount(s, options={"timeout": "3"})
        f = files(m)
        t0 = time.monotonic()
        with pytest.raises(OSError) as e:
            with open(f[1], "rb") as fh:
                fh.read()
        took = time.monotonic() - t0
        assert e.value.errno == errno.EIO
        assert took < 12, "the read took %.1f s" % took
        assert "sends too slowly" in m.stderr()
        with open(f[2], "rb") as fh:
            assert fh.read() == s.folders["INBOX"][1].data
    finally:
        s.cleanup()
