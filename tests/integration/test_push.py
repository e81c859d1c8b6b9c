"""Push (DESIGN §2, §4): the watcher's IDLE on INBOX (NOTIFY on every
folder where offered) turns what the server says into refreshes, so
another client's new mail shows within a second or two with polls left
at their default; polls cost one round trip per interval and never
select; the watcher comes back after a cut link without missing mail;
.convoyfs/ctl takes sync FOLDER and grow FOLDER."""

import errno
import os
import re
import statistics
import time

import pytest

import harness
import scripted
import servers
from proxy import FaultProxy
from tlsproxy import LineProxy

REDUCED = servers.DOVECOT_REDUCED_CAPABILITY


def gen(n, seed):
    return [(msg, w, ()) for msg, w in harness.genmail.gen_messages(n, seed)]


def count(m, folder):
    d = os.path.join(m.path, *folder.split("/"))
    return sum(1 for n in os.listdir(d) if n.endswith(".eml"))


def push_line(m):
    return m.status_field("push")


def selectable(m):
    """How many folders the status file lists (the selectable ones)."""
    return len(re.findall(r"(?m)^folder ", m.status()))


def wait_push(m, want, timeout=30):
    harness.wait_until(lambda: re.fullmatch(want, push_line(m) or ""), timeout,
                       interval=0.1, what="push: %s (it says %r)" % (want, push_line(m)))


def append_latency(m, server, folder, seed, limit):
    """APPEND one message with a second client; seconds until its file is
    listed in the mount (None if not within limit)."""
    before = count(m, folder)
    msg = gen(1, seed)[0]
    with server.imap() as c:
        t0 = time.monotonic()
        typ, data = c.append(harness.quote(folder), None, None, msg[0])
        assert typ == "OK", data
        while time.monotonic() - t0 < limit:
            if count(m, folder) > before:
                return time.monotonic() - t0
            time.sleep(0.01)
    return None


def idle_pushes(server, wait=7.0):
    """Whether the server's IDLE tells a session of a message another
    session appended (imap4d's does not: it looks again every 5 s and
    still says nothing)."""
    with server.imap() as c:
        c.select("INBOX")
        tag = c._new_tag().decode()
        c.send(("%s IDLE\r\n" % tag).encode())
        if not c.readline().startswith(b"+"):
            return False
        server.append_many("INBOX", gen(1, 799))
        c.sock.settimeout(wait)
        try:
            line = c.readline()
        except OSError:
            line = b""
        c.send(b"DONE\r\n")
        return b"EXISTS" in line or b"RECENT" in line


@pytest.mark.parametrize("live_server", servers.KINDS, indirect=True)
def test_new_mail_in_inbox_shows_within_2s(live_server, mount):
    s = live_server
    s.append_many("INBOX", gen(4, 801))
    if "IDLE" not in s.capabilities():
        pytest.skip("%s offers no IDLE: polls alone find new mail" % s.kind)
    if not idle_pushes(s):
        pytest.skip("%s offers IDLE but pushes nothing for mail another session "
                    "appends (checked just now): its new mail shows at the "
                    "next poll" % s.kind)
    m = mount(s)
    wait_push(m, r"idle INBOX|notify \d+ folders")
    lat = []
    for i in range(20):
        t = append_latency(m, s, "INBOX", 810 + i, 2.0)
        assert t is not None, "append %d not listed within 2 s (%s)" % (i, lat)
        lat.append(t)
    print("%s: APPEND to INBOX -> file, median %.3f s, max %.3f s" % (
        s.kind, statistics.median(lat), max(lat)))
    assert count(m, "INBOX") == 25


@pytest.mark.parametrize("live_server", ["imap4d"], indirect=True)
def test_idle_that_says_nothing_still_polls_inbox(live_server, mount):
    """imap4d accepts IDLE but tells nothing of other sessions' mail
    (not even at NOOP): polls still ask INBOX's STATUS."""
    s = live_server
    s.append_many("INBOX", gen(3, 820))
    m = mount(s, options={"poll_interval": "2"})
    wait_push(m, r"idle INBOX")
    s.append_many("INBOX", gen(1, 821))
    harness.wait_until(lambda: count(m, "INBOX") == 4, 8, interval=0.1,
                       what="the poll to find new mail in INBOX")


def test_notify_pushes_every_folder(dovecot_factory, mount):
    d = dovecot_factory()
    for f in ("INBOX", "Archive", "Lists/dev"):
        d.append_many(f, gen(3, 830))
    m = mount(d)
    wait_push(m, r"notify %d folders" % selectable(m))
    lat = []
    for i in range(10):
        folder = ("Archive", "Lists/dev")[i % 2]
        t = append_latency(m, d, folder, 840 + i, 2.0)
        assert t is not None, "append %d to %s not listed within 2 s (%s)" % (i, folder, lat)
        lat.append(t)
    print("dovecot NOTIFY: APPEND to another folder -> file, median %.3f s, max %.3f s" % (
        statistics.median(lat), max(lat)))


def test_an_exists_with_a_count_already_seen_costs_no_refresh(mount):
    """Each refresh of a folder is an EXAMINE, and on a large maildir an
    EXAMINE costs Dovecot a scan (0.1-0.5 s at 100 000 messages). An
    EXISTS that repeats the count the watcher knew (Dovecot says it
    again when another session's look brings new mail into its index),
    or that gives the count the sync thread's own last look found, is
    no news: it starts no refresh. A new count does."""
    s = scripted.ScriptedImap()
    s.caps = "IMAP4rev1 IDLE"
    try:
        for i in range(3):
            s.add("INBOX", gen(1, 960 + i)[0][0])
        m = mount(s, options={"poll_interval": "600"})
        wait_push(m, r"idle INBOX")
        m.wait_idle(30)

        def examines():
            with s.lock:
                return sum(1 for c in s.commands if re.match(r"\S+ EXAMINE INBOX", c, re.I))

        def settle():
            time.sleep(1.5)
            m.wait_idle(30)

        def pushed(text):
            harness.wait_until(lambda: s.push(text), 10, interval=0.05,
                               what="the watcher to IDLE")

        before = examines()
        pushed(b"* 3 EXISTS\r\n")
        settle()
        assert examines() == before, "a repeated EXISTS 3 started a refresh"
        s.add("INBOX", gen(1, 963)[0][0])
        pushed(b"* 4 EXISTS\r\n")
        harness.wait_until(lambda: count(m, "INBOX") == 4, 10, interval=0.05,
                           what="the pushed message to be listed")
        settle()
        assert examines() == before + 1
        # the sync thread sees a fifth message first (asked for), then
        # the watcher hears of it: nothing left to look at
        s.add("INBOX", gen(1, 964)[0][0])
        with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
            f.write("sync INBOX\n")
        harness.wait_until(lambda: count(m, "INBOX") == 5, 10, interval=0.05,
                           what="the asked-for refresh to list the fifth")
        settle()
        assert examines() == before + 2
        pushed(b"* 5 EXISTS\r\n")
        settle()
        assert examines() == before + 2, "EXISTS 5, which the last look saw, started a refresh"
        m.stop()
    finally:
        s.cleanup()


def poll_sessions(d, mark):
    """(watcher's commands, everyone else's commands, everyone else's
    raw lines) after mark, from Dovecot's rawlog."""
    watcher, other, lines = [], [], []
    for _name, text, _out in d.rawlog_sessions(mark):
        cmds = [ln.split(" ", 2)[1].upper() if " " in ln else ln.strip().upper()
                for ln in text.splitlines() if ln.strip()]
        if "IDLE" in cmds or "DONE" in cmds:
            watcher += cmds
        else:
            other += cmds
            lines += [ln for ln in text.splitlines() if ln.strip()]
    return watcher, other, lines


@pytest.mark.parametrize("caps", [None, REDUCED], ids=["full", "reduced"])
def test_unchanged_account_costs_one_round_trip_per_interval(dovecot_factory, mount, caps):
    """20 folders, 5 poll intervals, nothing changes: the watcher only
    IDLEs; the sync connection sends one LIST-STATUS per interval where
    offered, else LIST with a STATUS of every folder in the same write. Never SELECT, EXAMINE or FETCH."""
    d = dovecot_factory(imap_capability=caps)
    folders = ["INBOX"] + ["F%02d" % i for i in range(19)]
    with d.session() as c:
        for i, f in enumerate(folders):
            d.append_many(f, gen(2, 850 + i), imap=c)
    m = mount(d, options={"poll_interval": "1"})
    wait_push(m, r"notify %d folders" % selectable(m) if caps is None else r"idle INBOX")
    time.sleep(1.5)  # the first poll after the full round
    mark = d.rawlog_mark()
    time.sleep(5.5)
    watcher, other, lines = poll_sessions(d, mark)
    text = "\n".join(lines)
    assert set(watcher) <= {"IDLE", "DONE"}, watcher
    assert set(other) <= {"LIST", "STATUS"}, text
    polls = other.count("LIST")
    assert 4 <= polls <= 7, text
    if caps is None:
        assert "STATUS" not in other, text
        assert all(re.search(r"RETURN \((SPECIAL-USE )?STATUS \(", ln) for ln in lines), text
    else:
        # INBOX too: an IDLE that says nothing (imap4d's) must not hide it
        assert other.count("STATUS") == selectable(m) * polls, text
        everything = d.rawlog_text()
        assert not re.search(r"(?im)^\S+ (NOTIFY|ESEARCH)|RETURN \(|LIST-STATUS",
                             everything), "a command the server does not offer"
        # pipelined: LIST and every STATUS are written at once, so the
        # server reads them together (a client that waited for each
        # reply could never send two in one read); TCP may still split
        # a write now and then
        stamps = poll_stamps(d, mark)
        whole = sum(1 for n in stamps if n == selectable(m) + 1)
        assert stamps and whole >= len(stamps) / 2, stamps
    fill_one = gen(1, 880)
    d.append_many("F07", fill_one)
    harness.wait_until(lambda: count(m, "F07") == 3, 15, interval=0.2,
                       what="the poll to find new mail in F07")


@pytest.mark.parametrize("live_server", ["cyrus", "imap4d"], indirect=True)
def test_unchanged_account_polls_only_status_elsewhere(live_server, mount):
    """The same on Cyrus and imap4d, which keep no rawlog: what convoyfs
    sends is read at a TLS relay. Cyrus answers one LIST-STATUS per
    interval; imap4d a LIST and a STATUS of every folder."""
    s = live_server
    with s.session() as c:
        for i in range(20):
            s.append_many("INBOX" if i == 0 else "F%02d" % i, gen(2, 860 + i), imap=c)
    with LineProxy(s) as proxy:
        m = mount(s, url=proxy.url(), options={"poll_interval": "1"})
        wait_push(m, r"idle INBOX")
        time.sleep(1.5)
        t0 = time.monotonic()
        time.sleep(5.5)
        polls = 0
        for lines in proxy.sent_lines(t0).values():
            cmds = [ln.split(" ", 2)[1].upper() if " " in ln else ln.upper()
                    for ln in lines if ln]
            if "IDLE" in cmds or "DONE" in cmds:
                assert set(cmds) <= {"IDLE", "DONE"}, lines
                continue
            assert set(cmds) <= {"LIST", "STATUS"}, lines
            polls += cmds.count("LIST")
            if "LIST-STATUS" in s.capabilities():
                assert "STATUS" not in cmds, lines
                continue
            # each whole poll (between two LISTs: the window may cut
            # one at either end) asks every folder's STATUS once
            starts = [i for i, c in enumerate(cmds) if c == "LIST"]
            n = selectable(m)
            for a, b in zip(starts, starts[1:]):
                assert cmds[a + 1:b].count("STATUS") == b - a - 1 == n, (a, b, n, lines)
        assert 4 <= polls <= 7, proxy.sent_lines(t0)
        s.append_many("F05", gen(1, 885))
        harness.wait_until(lambda: count(m, "F05") == 3, 15, interval=0.2,
                           what="the poll to find new mail in F05")
        m.stop()


def poll_stamps(d, mark):
    """For every LIST the sync connection sent after mark: how many of
    its commands carry LIST's rawlog timestamp (Dovecot stamps what one
    read brought in)."""
    out = []
    for name in sorted(os.listdir(d.rawlog_dir)):
        if not name.endswith(".in"):
            continue
        p = os.path.join(d.rawlog_dir, name)
        with open(p, "rb") as f:
            f.seek(mark.get(p, 0))
            rows = [ln.decode(errors="replace").split(" ", 2)
                    for ln in f.read().splitlines() if ln.strip()]
        rows = [r for r in rows if len(r) == 3]
        if not any(r[2].upper().startswith("LIST") for r in rows):
            continue
        for r in rows:
            if r[2].upper().startswith("LIST"):
                out.append(sum(1 for x in rows if x[0] == r[0]))
    return out


def test_watcher_cut_by_proxy_comes_back_and_misses_nothing(fresh_dovecot, mount):
    d = fresh_dovecot
    d.append_many("INBOX", gen(3, 890))
    with FaultProxy("127.0.0.1", d.port) as proxy:
        m = mount(d, url=proxy.url(user=d.user))
        wait_push(m, r"notify \d+ folders")
        proxy.cut_open()
        # while the watcher is away
        d.append_many("INBOX", gen(1, 891))
        wait_push(m, r"polling every \d+ s", timeout=10)
        # back within the backoff (2 s and its jitter), with what was
        # appended meanwhile
        wait_push(m, r"notify \d+ folders", timeout=10)
        harness.wait_until(lambda: count(m, "INBOX") == 4, 10, interval=0.1,
                           what="the message appended while the watcher was away")
        t = append_latency(m, d, "INBOX", 892, 2.0)
        assert t is not None, "push did not resume"
        assert count(m, "INBOX") == 5
        m.stop()


def test_idle_is_renewed_before_the_server_limit(fresh_dovecot, mount, monkeypatch):
    """The watcher leaves IDLE and starts a new one before the limit (25
    min; shortened here) and still hears new mail after."""
    d = fresh_dovecot
    d.append_many("INBOX", gen(2, 900))
    monkeypatch.setenv("CONVOYFS_TEST_IDLE_MS", "700")
    m = mount(d)
    wait_push(m, r"notify \d+ folders")
    mark = d.rawlog_mark()
    time.sleep(3)
    watcher, _other, _lines = poll_sessions(d, mark)
    assert watcher.count("IDLE") >= 3 and watcher.count("DONE") >= 3, watcher
    assert append_latency(m, d, "INBOX", 901, 2.0) is not None


def ctl(m, text):
    with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
        f.write(text)


def test_ctl_commands(dovecot_factory, mount):
    d = dovecot_factory(imap_capability=REDUCED)
    d.append_many("INBOX", gen(2, 910))
    d.append_many("Archive", gen(2, 911))
    m = mount(d, options={"poll_interval": "3600"})
    for bad in ("frobnicate\n", "sync NoSuchFolder\n", "grow\n", "grow Nope/x\n"):
        with pytest.raises(OSError) as e:
            ctl(m, bad)
        assert e.value.errno == errno.EINVAL, bad
    assert "commands: sync, sync FOLDER, grow FOLDER" in m.stderr()
    assert 'no folder "NoSuchFolder"' in m.stderr()
    d.append_many("Archive", gen(1, 912))
    time.sleep(1.5)
    assert count(m, "Archive") == 2  # no push for Archive, no poll for an hour
    ctl(m, "sync Archive\n")
    harness.wait_until(lambda: count(m, "Archive") == 3, 10, interval=0.1,
                       what="sync Archive to find the new message")
    ctl(m, "sync\n")
    m.wait_idle(30)


def test_push_runs_between_the_steps_of_a_long_first_sync(fresh_dovecot, mount):
    """While a 20k-message folder is still being learned, new mail in
    INBOX is refreshed between two steps of its growth, not after it."""
    d = fresh_dovecot
    d.append_many("INBOX", gen(3, 920))
    d.append_many("Big", gen(20000, 921))
    m = mount(d, wait_idle=False)
    wait_push(m, r"notify \d+ folders")

    def learning():
        mm = re.search(r"(?m)^folder Big: (\d+)/20000 messages, learning", m.status())
        return mm and int(mm.group(1)) >= 1000
    harness.wait_until(learning, 120, interval=0.05, what="Big to be learning")
    t = append_latency(m, d, "INBOX", 922, 2.0)
    assert t is not None, "new mail in INBOX waited for the growth of Big"
    mm = re.search(r"(?m)^folder Big: (\d+)/", m.status())
    assert int(mm.group(1)) < 20000, "Big was complete already: the test proves nothing"
    m.wait_idle(300)
    assert count(m, "Big") == 20000 and count(m, "INBOX") == 4
