"""Growth by date (DESIGN §4 grow) and the sync horizon.

A folder too big to learn at once is learned newest first: refresh's
first look takes the newest batch by sequence number, then each growth
step samples INTERNALDATEs, searches SINCE a day that leaves about a
batch to learn, and records complete_since with the messages it covers.
Where dates do not follow UIDs it steps back through windows of days.
With -o sync_days=N (or sync_since=) a folder learns only its recent
mail until `grow FOLDER` is written to .convoyfs/ctl.

The order in which messages arrived is read from the store: umids (the
inode numbers) are handed out in the order messages are stored, so it
does not depend on timing. Big folders are filled by writing maildir
files straight into a Dovecot that is already running (Dovecot takes a
file's mtime as its INTERNALDATE and numbers new files in name order),
or into an imap4d's new/ (it takes the Date header as INTERNALDATE and
numbers them in name order at the next read-write SELECT); Cyrus gets
APPENDs with explicit INTERNALDATEs.
"""

import contextlib
import datetime as dt
import imaplib
import os
import pwd
import random
import re
import sqlite3
import subprocess
import time

import pytest

import harness
import servers

DAY = 86400
REDUCED = servers.DOVECOT_REDUCED_CAPABILITY


# -- filling folders ---------------------------------------------------------------

def message(tag, i, when):
    """A small message, unique by its Message-ID."""
    date = email_date(when)
    return ("From: Sender %d <s%d@grow.test>\r\n"
            "To: alice@grow.test\r\n"
            "Subject: %s message %d\r\n"
            "Date: %s\r\n"
            "Message-ID: <%s.%d@grow.test>\r\n"
            "\r\n"
            "Body of %s message %d.\r\n" % (i % 50, i % 50, tag, i, date, tag, i, tag, i)
            ).encode()


def email_date(when):
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S +0000")


def fill_maildir(d, folder, dates, tag):
    """Dovecot only: one maildir file per date into folder's cur/, named so
    that Dovecot gives them UIDs in the order of @dates, each file's mtime
    its INTERNALDATE. The folder is made over IMAP first, and looked at
    after, so the files have their UIDs before anything else is added."""
    d.create(folder)
    cur = os.path.join(d.home_root, d.user, "Maildir", folder, "cur")
    scratch = os.path.join(d.dir, "fill-tmp")
    os.makedirs(scratch, exist_ok=True)
    owner = pwd.getpwnam(d._users()[0])
    # a first number no file of this folder has used yet
    start = int(time.time() * 1000)
    for i, when in enumerate(dates):
        data = message(tag, i, when).replace(b"\r\n", b"\n")
        vsize = len(data) + data.count(b"\n")
        name = "%015d.M%dP%d.grow,S=%d,W=%d:2," % (start + i, i, os.getpid(), len(data), vsize)
        tmp = os.path.join(scratch, name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.utime(tmp, (when, when))
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.rename(tmp, os.path.join(cur, name))
    with d.session() as c:
        typ, data = c.select(harness.quote(servers.raw_name(folder)), readonly=True)
        assert typ == "OK" and int(data[0]) >= len(dates), data
        c.close()


def fill_imap4d(s, folder, dates, tag):
    """imap4d only: one file per date into the folder's maildir new/, as a
    delivery leaves it, then one read-write SELECT (Imap4d.settle) that
    numbers them in name order, so in the order of @dates, and moves
    them to cur/. imap4d takes a message's INTERNALDATE from its Date
    header (an APPEND's date is not kept), which message() sets to the
    date. An APPEND each would cost a rescan of the maildir each: some
    20 s for 2500. Checked after: every date is there as INTERNALDATE."""
    s.create(folder)
    box = os.path.join(s.home, "Mail", *folder.split("/"))
    new = os.path.join(box, "new")
    st = os.stat(box)
    scratch = os.path.join(s.dir, "fill-tmp")
    os.makedirs(scratch, exist_ok=True)
    start = int(time.time())
    for i, when in enumerate(dates):
        # mailutils reads maildir files with LF line ends
        data = message(tag, i, when).replace(b"\r\n", b"\n")
        name = "%d.M%07dP%d.fill" % (start, i, os.getpid())
        tmp = os.path.join(scratch, name)
        with open(tmp, "wb") as f:
            f.write(data)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.rename(tmp, os.path.join(new, name))
    s.settle(folder)
    got = server_dates(s, folder)
    assert sorted(got.values()) == sorted(dates), (folder, len(got), len(dates))
    assert [got[u] for u in sorted(got)][-len(dates):] == list(dates), folder


def fill_append(s, folder, dates, tag, first=0):
    items = [(message(tag, first + i, when),
              dt.datetime.fromtimestamp(when, dt.timezone.utc), ())
             for i, when in enumerate(dates)]
    s.append_many(folder, items)


def fill(s, folder, dates, tag):
    """The fastest way each server has: maildir files for Dovecot and
    imap4d, APPEND with INTERNALDATE for Cyrus (MULTIAPPEND: fast)."""
    if s.kind.startswith("dovecot"):
        fill_maildir(s, folder, dates, tag)
    elif s.kind == "imap4d":
        fill_imap4d(s, folder, dates, tag)
    else:
        fill_append(s, folder, dates, tag)


# -- what each side holds ------------------------------------------------------------

def parse_internaldate(text):
    return int(dt.datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z").timestamp())


def server_dates(s, folder):
    """{uid: INTERNALDATE as Unix time} of a folder, read-only, messages
    flagged \\Deleted left out (the mount hides them)."""
    out = {}
    with s.session() as c:
        typ, data = c.select(harness.quote(servers.raw_name(folder)), readonly=True)
        assert typ == "OK", data
        if int(data[0] or 0):
            typ, data = c.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE)")
            assert typ == "OK", data
            for line in data:
                if isinstance(line, tuple):
                    line = line[0]
                if not line:
                    continue
                u = re.search(rb"\bUID (\d+)", line)
                t = re.search(rb'INTERNALDATE "([^"]+)"', line)
                fl = re.search(rb"FLAGS \(([^)]*)\)", line)
                if u and t and not (fl and b"\\Deleted" in fl.group(1)):
                    out[int(u.group(1))] = parse_internaldate(t.group(1).decode())
        with contextlib.suppress(Exception):
            c.close()
    return out


@contextlib.contextmanager
def store_db(m):
    """The mount's store, read beside the running daemon (WAL)."""
    db = sqlite3.connect(os.path.join(m.cache_dir, "cache.db"), timeout=30)
    try:
        yield db
    finally:
        db.close()


def store_rows(m, folder):
    """{uid: (umid, date)} of the messages of a folder in the store."""
    with store_db(m) as db:
        rows = db.execute("SELECT m.uid, m.umid, m.date FROM messages m "
                          "JOIN folders f ON f.id = m.folder "
                          "WHERE f.name = ? AND m.uid > 0",
                          (servers.raw_name(folder),)).fetchall()
    return {u: (umid, date) for u, umid, date in rows}


def store_folder(m, folder):
    with store_db(m) as db:
        return db.execute("SELECT low_uid, uidnext, complete_since FROM folders "
                          "WHERE name = ?", (servers.raw_name(folder),)).fetchone()


def listed_uids(m, folder):
    d = os.path.join(m.path, *folder.split("/"))
    return {int(os.getxattr(os.path.join(d, n), "user.convoyfs.uid"))
            for n in os.listdir(d) if n.endswith(".eml")}


def write_ctl(m, line):
    with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
        f.write(line + "\n")


def searches(d, mark=None):
    return [line for line in d.rawlog_text(mark).splitlines()
            if re.search(r"(?i)^\S+ UID SEARCH ", line)]


@pytest.fixture
def make_server():
    """make_server(kind) -> a started server of that kind, stopped by pid
    at teardown."""
    made = []

    def make(kind):
        s = servers.make(kind)
        made.append(s)
        return s.start()
    yield make
    for s in made:
        s.cleanup()


# -- the options -----------------------------------------------------------------------

@pytest.mark.parametrize("opt, why", [
    ("sync_days=0", "sync_days: 0"),
    ("sync_days=-5", "sync_days: -5"),
    ("sync_days=30d", "sync_days: 30d"),
    ("sync_days=36501", "sync_days: 36501"),
    ("sync_since=2026-02-30", "sync_since: 2026-02-30"),
    ("sync_since=2026-1-5", "sync_since: 2026-1-5"),
    ("sync_since=yesterday", "sync_since: yesterday"),
    ("sync_since=2026-01-05,sync_days=3", "sync_since and sync_days cannot both be given"),
])
def test_bad_horizon_is_refused_with_one_line(convoyfs_bin, tmp_path, opt, why):
    r = subprocess.run([convoyfs_bin, "-f", "-o", opt, "imaps://alice@127.0.0.1:1",
                        str(tmp_path / "mnt")], capture_output=True, timeout=30)
    assert r.returncode == 2
    first = r.stderr.decode().splitlines()[0]
    assert first.startswith("convoyfs: ") and why in first, first


# -- newest first ------------------------------------------------------------------------

def test_big_folder_learns_newest_first(make_server, mount):
    """50,000 messages, dated 10 minutes apart in UID order: the newest 100
    are in the first batch stored (the first listing), and the rest come
    newest first by date, in few steps (each as big as what is known,
    up to 8 batches) of bounded commands. Dovecot only: filling 50,000 by APPEND would cost minutes."""
    d = make_server("dovecot")
    n = 50000
    base = int(time.time()) - n * 600 - 5 * DAY
    fill_maildir(d, "Big", [base + i * 600 for i in range(n)], "big")
    m = mount(d, wait_idle=False)
    seen = None

    def look():
        nonlocal seen
        rows = store_rows(m, "Big")
        if rows:
            seen = rows
        return rows
    harness.wait_until(look, 300, interval=0.05, what="the first batch of Big")
    m.wait_idle(1200)

    server = server_dates(d, "Big")
    rows = store_rows(m, "Big")
    assert len(server) == n
    assert set(rows) == set(server)
    newest = sorted(server, key=lambda u: (server[u], u))[-100:]
    by_umid = sorted(rows, key=lambda u: rows[u][0])
    assert set(newest) <= set(by_umid[:1000]), "the newest 100 were not in the first batch"
    if len(seen) < n:
        # the listing while the folder was still being learned
        assert set(newest) <= set(seen)
    # newest first throughout: chunks of 5000 in the order stored
    chunks = [[rows[u][1] for u in by_umid[i:i + 5000]] for i in range(0, n, 5000)]
    for a, b in zip(chunks, chunks[1:]):
        assert max(b) <= max(a) and min(b) <= min(a)
        assert sorted(b)[len(b) // 2] < sorted(a)[len(a) // 2]
    # steps as big as what is known (1000, 2000, 4000, then 8000 each),
    # each one search or a few (a push for Big itself, as Dovecot
    # indexes the new files, does not cut a step of Big short)
    found = searches(d)
    assert 6 <= len(found) <= 40, len(found)
    assert all("SINCE" in line.upper() for line in found[:-1]), found[:3]
    assert max(len(line) for line in d.rawlog_text().splitlines()) <= 8192
    assert store_folder(m, "Big")[0] == 1
    assert re.search(r"(?m)^folder Big: 50000/50000 messages, complete$", m.status())


# -- dates in no order, and one date for all -------------------------------------------

def test_scattered_and_same_day_folders_sync_completely(live_server, mount):
    """A folder filled out of date order (10 years of dates in random
    order) and one whose messages all have the same INTERNALDATE: each
    ends exactly as on the server, learned by date (no order, and
    order), on every server."""
    s = live_server
    n = 2500
    rng = random.Random(4242)
    now = int(time.time())
    fill(s, "Scattered", [now - rng.randrange(10 * 365 * DAY) for _ in range(n)], "scattered")
    fill(s, "SameDay", [now - 200 * DAY] * n, "sameday")
    m = mount(s, debug="sync", idle_timeout=900)
    for folder in ("Scattered", "SameDay"):
        server = server_dates(s, folder)
        assert len(server) == n, folder
        assert set(store_rows(m, folder)) == set(server), folder
        assert store_folder(m, folder)[0] == 1, folder
    log = m.stderr()
    assert re.search(r"folder Scattered: \d+ unknown since \d+ \(no order\)", log), log[-3000:]
    assert re.search(r"folder SameDay: \d+ unknown since \d+ \(date order\)", log), log[-3000:]
    servers.converge(m, s, timeout=120)


# -- the horizon --------------------------------------------------------------------------

def ten_years(now):
    """Dates of a folder of 10 years: 1500 spread over the years before
    the last 60 days, 180 over those, rising with UIDs; then 20 imported
    late (high UIDs, dates of 5 to 9 years ago)."""
    old = [now - 10 * 365 * DAY + i * ((10 * 365 - 60) * DAY // 1500) for i in range(1500)]
    recent = [now - 60 * DAY + i * (60 * DAY // 180) + 300 for i in range(180)]
    late = [now - (5 + i % 5) * 365 * DAY - i * DAY for i in range(20)]
    return old + recent, late


def mixed_years(now):
    """1000 dates of 10 years in no order, 120 of them in the last 60
    days: what the horizon learns is scattered over the UIDs."""
    rng = random.Random(31)
    dates = [now - rng.randrange(60 * DAY, 10 * 365 * DAY) for _ in range(880)]
    dates += [now - rng.randrange(60 * DAY) for _ in range(120)]
    rng.shuffle(dates)
    return dates


def check_horizon(s, m, folder, horizon):
    """The store holds every message of @folder dated from @horizon on and
    none dated more than 2 days before it; the listing shows the same.
    Returns (server dates, UIDs held)."""
    server = server_dates(s, folder)
    must = {u for u, t in server.items() if t >= horizon}
    may = {u for u, t in server.items() if t >= horizon - 2 * DAY}
    got = set(store_rows(m, folder))
    assert must <= got, (folder, sorted(must - got)[:10])
    assert got <= may, (folder, sorted(got - may)[:10])
    assert len(must) >= 40, folder
    assert listed_uids(m, folder) == got, folder
    low_uid, _uidnext, complete_since = store_folder(m, folder)
    assert low_uid != 1 and 0 < complete_since <= horizon, folder
    return server, got


def flags_of_listed(m, folder):
    d = os.path.join(m.path, folder)
    out = {}
    for n in os.listdir(d):
        p = os.path.join(d, n)
        out[int(os.getxattr(p, "user.convoyfs.uid"))] = set(
            os.getxattr(p, "user.convoyfs.flags").decode().split())
    return out


def test_sync_days_then_grow_to_the_end(live_server, mount):
    """sync_days=30 on folders of 10 years (dates rising with UIDs, and in
    no order) learns only their last 30 days (2 days of margin at the old
    edge, none at the new one); a folder whose mail is all recent is
    complete. Refreshes cover mail learned by date however scattered its
    UIDs: flags and expunges are seen, and a flag change of old mail
    brings none of it in. `grow FOLDER` in .convoyfs/ctl then learns the
    rest: the folder ends exactly as on the server."""
    s = live_server
    now = int(time.time())
    dates, late = ten_years(now)
    fill(s, "Ten", dates, "ten")
    fill_append(s, "Ten", late, "ten", first=len(dates))
    fill(s, "Mixed", mixed_years(now), "mixed")
    fill_append(s, "Recent", [now - i * DAY for i in range(5)], "recent")
    fill_append(s, "INBOX", [now - 400 * DAY, now - 2 * DAY], "inbox")
    m = mount(s, options={"sync_days": "30"}, idle_timeout=600)

    horizon = now - 30 * DAY
    ten, _ = check_horizon(s, m, "Ten", horizon)
    mixed, got = check_horizon(s, m, "Mixed", horizon)
    inbox = server_dates(s, "INBOX")
    assert set(store_rows(m, "INBOX")) == {u for u, t in inbox.items() if t >= horizon}
    assert set(store_rows(m, "Recent")) == set(server_dates(s, "Recent"))
    assert store_folder(m, "Recent")[0] == 1
    assert re.search(r"(?m)^folder Recent: 5/5 messages, complete$", m.status())
    # down to the horizon: settled (polls do not look again), and said so
    for folder in ("Ten", "Mixed"):
        assert re.search(r"(?m)^folder %s: \d+/\d+ messages, complete since "
                         r"\d{4}-\d\d-\d\d$" % folder, m.status()), m.status()

    # refreshes cover what was learned by date, scattered over the UIDs;
    # old mail between stays out
    known = sorted(got)
    between = next(u for u in range(known[0] + 1, known[-1]) if u in mixed and u not in got)
    s.store_flags("Mixed", [known[0], known[-1], between], "+FLAGS", r"\Flagged")
    s.expunge_uids("Mixed", [known[1]])
    servers.sync_now(m)
    m.wait_idle(120)
    after = set(store_rows(m, "Mixed"))
    assert after == got - {known[1]}
    flags = flags_of_listed(m, "Mixed")
    assert "\\Flagged" in flags[known[0]] and "\\Flagged" in flags[known[-1]]
    assert sum("\\Flagged" in f for f in flags.values()) == 2

    # a refresh round does not go past the horizon
    servers.sync_now(m)
    m.wait_idle(120)
    assert set(store_rows(m, "Mixed")) == after
    assert set(store_rows(m, "Ten")) == check_horizon(s, m, "Ten", horizon)[1]

    # asked for: all of it
    for folder in ("Ten", "Mixed"):
        write_ctl(m, "grow " + folder)
    for folder in ("Ten", "Mixed"):
        want = set(server_dates(s, folder))
        harness.wait_until(lambda: set(store_rows(m, folder)) == want, 300, interval=0.2,
                           what="grow %s to learn the whole folder" % folder)
        harness.wait_until(lambda: store_folder(m, folder)[0] == 1, 60, interval=0.2,
                           what="%s to be complete" % folder)
    m.wait_idle(120)
    for folder in ("Ten", "Mixed"):
        assert re.search(r"(?m)^folder %s: (\d+)/\1 messages, complete$" % folder,
                         m.status()), m.status()
    assert len(ten) == len(dates) + len(late)
    # the other folders keep their horizon
    assert set(store_rows(m, "INBOX")) == {u for u, t in inbox.items() if t >= horizon}
    tree = servers.mount_tree(m.path)
    want_tree = servers.server_tree(s)
    for folder in ("Ten", "Mixed"):
        assert tree[folder] == want_tree[folder], "\n".join(servers.tree_diff(tree, want_tree))


# -- another client during the first sync ---------------------------------------------

def expunge(d, folder, uids):
    with d.session() as c:
        typ, data = c.select(harness.quote(folder))
        assert typ == "OK", data
        spec = ",".join(str(u) for u in uids)
        typ, data = c.uid("STORE", spec, "+FLAGS.SILENT", r"(\Deleted)")
        assert typ == "OK", data
        typ, data = c.uid("EXPUNGE", spec)
        assert typ == "OK", data
        c.close()


@pytest.mark.parametrize("kind", ["dovecot", "dovecot-reduced"])
def test_changes_during_the_first_sync_of_a_big_folder(make_server, mount, kind):
    """20,000 messages; while the first sync runs another client appends
    mail (new, and dated years back), expunges mail already learned and
    mail not learned yet, and flags some: the folder ends exactly as on
    the server. With the reduced server, flags and expunges are checked
    by UID sets of the known messages (no CONDSTORE). Dovecot only: the
    fill is by maildir files."""
    d = make_server(kind)
    n = 20000
    base = int(time.time()) - n * 1800 - DAY
    fill_maildir(d, "Big", [base + i * 1800 for i in range(n)], "busy")
    m = mount(d, wait_idle=False)
    harness.wait_until(lambda: len(store_rows(m, "Big")) >= 1000, 300, interval=0.05,
                       what="the first batch of Big")
    rng = random.Random(99)
    now = int(time.time())
    fill_append(d, "Big", [now - i * 60 for i in range(30)], "new", first=n)
    fill_append(d, "Big", [base + rng.randrange(n * 1800) for _ in range(20)], "old", first=n + 30)
    known = sorted(store_rows(m, "Big"))
    gone = rng.sample(known[-900:], 10) + rng.sample(range(1, 2000), 10) + \
        rng.sample(range(8000, 12000), 10)
    expunge(d, "Big", gone)
    with d.session() as c:
        c.select("Big")
        c.uid("STORE", ",".join(str(u) for u in rng.sample(range(2000, 19000), 40)),
              "+FLAGS.SILENT", r"(\Seen $Label1)")
        c.close()
    m.wait_idle(1200)
    # what the watcher did not push (the reduced server has no NOTIFY)
    # the next refresh finds
    servers.converge(m, d, timeout=180)
    server = server_dates(d, "Big")
    assert len(server) == n + 50 - 30
    assert set(store_rows(m, "Big")) == set(server)
    assert store_folder(m, "Big")[0] == 1
    assert max(len(line) for line in d.rawlog_text().splitlines()) <= 8192
