"""The kernel's caches: a message's entry and attributes are kept for an
hour, a folder's listing between opens, READDIRPLUS answers `ls -l`
whole. So a warm `ls -l` sends (almost) no request per file, counted by
the daemon itself (.convoyfs/status, "fuse requests" and "fuse KIND"
lines); and what the kernel keeps must still follow every change at the
next sync, not at the timeout: a message expunged or flagged \\Deleted by
another client, new mail, flags, a conversation merged by a new reply,
and at once the mount's own mv, rm, mkdir and rmdir.
"""

import datetime as dt
import os
import re
import subprocess
import time

import harness
import servers
from servers import converge

XATTR = servers.XATTR
CONV = harness.CONVERSATIONS
N = 300


def counts(m):
    """{kind: requests} from .convoyfs/status ("requests" is the total)."""
    return {k: int(v) for k, v in
            re.findall(r"(?m)^fuse (\w+): (\d+)$", m.status())}


def requests_of(m, fn):
    """The requests fn() made the daemon serve, by kind, less what reading
    the status file itself costs (a lookup, an open, reads, a release)."""
    def delta(f):
        before = counts(m)
        f()
        after = counts(m)
        return {k: after[k] - before.get(k, 0) for k in after}
    noop = delta(lambda: None)
    got = delta(fn)
    return {k: max(0, got[k] - noop.get(k, 0)) for k in got}


def ls_l(path):
    out = subprocess.run(["ls", "-l", path], check=True, capture_output=True).stdout
    return [l for l in out.decode().splitlines() if l.startswith("-")]


def start(mount, n=N, poll="60"):
    s = servers.make("dovecot")
    s.start()
    items = [(m, w, ()) for m, w in harness.genmail.gen_messages(n, 4242)]
    s.append_many("INBOX", items)
    s.append_many("Archive", items[:3])
    m = mount(s, options={"poll_interval": poll}, idle_timeout=60)
    return s, m


def msg(mid, subject, refs=()):
    """A small message with Message-ID mid and References refs."""
    lines = ["From: a@example.test", "To: b@example.test",
             "Subject: %s" % subject, "Message-ID: %s" % mid,
             "Date: Mon, 02 Mar 2026 10:00:00 +0000"]
    if refs:
        lines.append("References: %s" % " ".join(refs))
    return ("\r\n".join(lines) + "\r\n\r\nbody of %s\r\n" % mid).encode()


def test_warm_ls_l_sends_no_request_per_file(mount):
    s, m = start(mount)
    try:
        inbox = os.path.join(m.path, "INBOX")
        cold = requests_of(m, lambda: ls_l(inbox))
        assert len(ls_l(inbox)) == N
        # READDIRPLUS carries every file's attributes: no LOOKUP each, and
        # a security label or ACL asked for once is not asked again
        assert cold["lookup"] < 10, cold
        assert cold["getxattr"] < 10, cold
        assert cold["readdirplus"] >= 1 and cold["readdir"] == 0, cold
        assert cold["requests"] < N // 5, cold
        warm = requests_of(m, lambda: ls_l(inbox))
        assert warm["requests"] < 20, warm
        assert warm["readdirplus"] == 0 and warm["lookup"] < 5, warm
        # a stat of every file, by path, after the listing: all cached
        names = os.listdir(inbox)
        st = requests_of(m, lambda: [os.stat(os.path.join(inbox, f)) for f in names])
        assert st["requests"] < 20, st
        # a second read of a message comes from the page cache: no READ
        path = os.path.join(inbox, names[0])
        with open(path, "rb") as f:
            body = f.read()
        again = requests_of(m, lambda: open(path, "rb").read())
        assert again["read"] == 0 and again["open"] == 1, again
        assert open(path, "rb").read() == body
        # no FLUSH at the close of a message
        assert again["flush"] == 0, again
        # the user.convoyfs.* attributes are still asked for
        assert os.getxattr(path, XATTR + "uid")
        assert "user.convoyfs.flags" in os.listxattr(path)
    finally:
        m.stop()
        s.cleanup()


def test_server_changes_show_at_the_next_sync(mount):
    s, m = start(mount, n=20)
    try:
        inbox = os.path.join(m.path, "INBOX")
        uids = sorted(servers.mount_tree(m.path)["INBOX"])
        by_uid = {int(os.getxattr(os.path.join(inbox, f), XATTR + "uid")): f
                  for f in os.listdir(inbox)}
        # everything in the kernel's caches: entries, attributes, listings
        ls_l(inbox)
        for f in by_uid.values():
            os.stat(os.path.join(inbox, f))
        gone, deleted, flagged = uids[0], uids[1], uids[2]
        s.expunge_uids("INBOX", gone)
        s.store_flags("INBOX", deleted, "+FLAGS", "\\Deleted")
        s.store_flags("INBOX", flagged, "+FLAGS", "\\Flagged")
        s.append("INBOX", msg("<new.1@kc.test>", "new mail"))
        converge(m, s, timeout=15, what="the mount to follow the server")
        names = os.listdir(inbox)
        for uid in (gone, deleted):
            assert by_uid[uid] not in names
            assert not os.path.exists(os.path.join(inbox, by_uid[uid]))
            assert by_uid[uid] not in "\n".join(ls_l(inbox))
        assert "\\Flagged" in os.getxattr(os.path.join(inbox, by_uid[flagged]),
                                          XATTR + "flags").decode()
        assert len(names) == len(uids) - 2 + 1
        assert any("new mail" in f for f in names)
    finally:
        m.stop()
        s.cleanup()


def test_conversation_merge_shows(mount):
    s = servers.make("dovecot")
    s.start()
    m = None
    try:
        now = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
        s.append_many("INBOX", [(msg("<a@kc.test>", "first"), now, ()),
                                (msg("<c@kc.test>", "third", ["<b@kc.test>"]), now, ())])
        m = mount(s, options={"poll_interval": "60"}, idle_timeout=60)
        conv = os.path.join(m.path, CONV)
        before = sorted(os.listdir(conv))
        assert len(before) == 2, before
        old = {}
        for d in before:
            for f in os.listdir(os.path.join(conv, d)):
                p = os.path.join(conv, d, f)
                os.stat(p)
                old[f] = p
        ls_l(os.path.join(m.path, "INBOX"))
        # the missing link: one conversation of the three
        s.append("INBOX", msg("<b@kc.test>", "second", ["<a@kc.test>"]), date=now)
        servers.sync_now(m)
        m.wait_idle(30)

        def merged():
            dirs = os.listdir(conv)
            return len(dirs) == 1 and len(os.listdir(os.path.join(conv, dirs[0]))) == 3
        harness.wait_until(merged, 10, what="one conversation of three messages")
        (d,) = os.listdir(conv)
        inbox = os.path.join(m.path, "INBOX")
        for f in os.listdir(inbox):
            p = os.path.join(inbox, f)
            assert os.getxattr(p, XATTR + "conversation").decode() == d
            assert os.stat(p).st_nlink == 2
        # the conversation that went is gone with its names: sync says
        # which merged, and its directory's name is told to go
        for f, p in old.items():
            assert os.path.exists(os.path.join(conv, d, f))
            if not p.startswith(os.path.join(conv, d) + "/"):
                harness.wait_until(lambda: not os.path.exists(p), 5,
                                   what="%s to go" % p)
    finally:
        if m is not None:
            m.stop()
        s.cleanup()


def test_conversation_names_and_listings_stay_cached_and_follow_changes(mount):
    """A conversation's directory keeps its name in the kernel and its
    listing between opens: listing it again, or after a second, sends
    no LOOKUP, no OPENDIR and no READDIR. What changes still shows at the next
    sync: a reply joins the listing, and a message older than the
    conversation's first renames its directory, the old name going at
    once (sync says which conversation lost it), not at a timeout."""
    s = servers.make("dovecot")
    s.start()
    m = None
    try:
        t = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
        # and 12 conversations of one message each, to count LOOKUPs on
        alone = [(msg("<alone.%d@kn.test>" % i, "alone %d" % i), t - dt.timedelta(days=30), ())
                 for i in range(12)]
        s.append_many("INBOX", [(msg("<a@kn.test>", "topic"), t, ()),
                                (msg("<b@kn.test>", "re topic", ["<a@kn.test>"]),
                                 t + dt.timedelta(hours=1), ())] + alone)
        m = mount(s, options={"poll_interval": "60"}, idle_timeout=60)
        conv = os.path.join(m.path, CONV)
        dirs = [os.path.join(conv, x) for x in os.listdir(conv)]
        (name,) = [x for x in os.listdir(conv) if "alone" not in x]
        d = os.path.join(conv, name)
        assert len(dirs) == 13 and len(os.listdir(d)) == 2

        def list_all():
            for x in dirs:
                os.listdir(x)
        list_all()
        again = requests_of(m, list_all)
        # nor an OPENDIR: the kernel opens directories itself
        assert again["readdir"] + again["readdirplus"] + again["opendir"] == 0, \
            sorted(again.items())
        time.sleep(1.5)  # past the attribute timeout: a GETATTR each
        later = requests_of(m, list_all)
        assert later["readdir"] + later["readdirplus"] == 0, sorted(later.items())
        # no LOOKUP of the 13 names (the status file read to count, whose
        # size changes, may be looked up again when the daemon is slow)
        assert later["lookup"] <= 3, sorted(later.items())

        s.append("INBOX", msg("<c@kn.test>", "re re topic", ["<b@kn.test>"]),
                 date=t + dt.timedelta(hours=2))
        servers.sync_now(m)
        m.wait_idle(30)
        harness.wait_until(lambda: len(os.listdir(d)) == 3, 5,
                           what="the reply in the conversation's listing")

        # older than "topic": the directory is named after it from now on
        s.append("INBOX", msg("<z@kn.test>", "origin", ["<a@kn.test>"]),
                 date=t - dt.timedelta(days=1))
        servers.sync_now(m)
        m.wait_idle(30)
        harness.wait_until(lambda: "origin" in " ".join(os.listdir(conv)), 5,
                           what="the conversation named after its new first message")
        (renamed,) = [x for x in os.listdir(conv) if "alone" not in x]
        assert renamed != name and renamed.endswith(name.rsplit(" ", 1)[-1]), (name, renamed)
        harness.wait_until(lambda: not os.path.exists(d), 5,
                           what="the directory's old name to go")
        assert len(os.listdir(os.path.join(conv, renamed))) == 4
    finally:
        if m is not None:
            m.stop()
        s.cleanup()


def test_a_poll_that_finds_nothing_keeps_the_listings(mount):
    """A poll lists the folders every interval: when the list is as it
    was, no folder's or conversation's listing is dropped from the
    kernel's cache, so a listing after a few polls sends no READDIR."""
    s, m = start(mount, n=20, poll="1")
    try:
        inbox = os.path.join(m.path, "INBOX")
        convs = [os.path.join(m.path, CONV, d) for d in os.listdir(os.path.join(m.path, CONV))]

        def listings():
            ls_l(inbox)
            ls_l(m.path)
            for d in convs:
                os.listdir(d)
        listings()
        mark = s.rawlog_mark()
        time.sleep(3.5)
        polls = len(re.findall(r"(?im)^\S+ LIST ", s.rawlog_text(mark)))
        assert polls >= 2, s.rawlog_text(mark)
        got = requests_of(m, listings)
        assert got["readdir"] + got["readdirplus"] == 0, sorted(got.items())
        # and a change still shows at the next sync
        s.append("INBOX", msg("<poll.1@kc.test>", "after the polls"))
        servers.sync_now(m)
        m.wait_idle(30)
        harness.wait_until(lambda: any("after the polls" in f for f in os.listdir(inbox)), 5,
                           what="new mail in the cached listing")
    finally:
        m.stop()
        s.cleanup()


def test_own_writes_show_at_once(mount):
    s, m = start(mount, n=10)
    try:
        inbox = os.path.join(m.path, "INBOX")
        archive = os.path.join(m.path, "Archive")
        ls_l(inbox)
        ls_l(archive)
        ls_l(m.path)
        names = sorted(os.listdir(inbox))
        moved, removed = names[0], names[1]
        os.rename(os.path.join(inbox, moved), os.path.join(archive, moved))
        assert moved not in os.listdir(inbox)
        assert moved in os.listdir(archive)
        assert not os.path.exists(os.path.join(inbox, moved))
        assert os.stat(os.path.join(archive, moved)).st_size > 0
        # under another name: the folder lists it by its own, and the
        # kernel's entry for the other goes with the next notification
        other = names[2]
        os.rename(os.path.join(inbox, other), os.path.join(archive, "renamed.eml"))
        harness.wait_until(lambda: not os.path.exists(os.path.join(archive, "renamed.eml")),
                           5, what="the name the mount did not give to go")
        assert other in os.listdir(archive)
        os.unlink(os.path.join(inbox, removed))
        assert removed not in os.listdir(inbox)
        assert not os.path.exists(os.path.join(inbox, removed))
        # \Deleted set through the mount hides it at once
        hidden = os.path.join(inbox, names[3])
        os.stat(hidden)
        os.setxattr(hidden, XATTR + "flags", b"\\Deleted")
        harness.wait_until(lambda: not os.path.exists(hidden), 5,
                           what="a message flagged \\Deleted to go")
        assert names[3] not in os.listdir(inbox)
        os.mkdir(os.path.join(m.path, "Made"))
        assert "Made" in os.listdir(m.path)
        os.rmdir(os.path.join(m.path, "Made"))
        assert "Made" not in os.listdir(m.path)
        # and still so once the server has it all
        converge(m, s, timeout=30, what="the mount's writes on the server")
        assert moved not in os.listdir(inbox) and removed not in os.listdir(inbox)
        assert len(os.listdir(inbox)) == len(names) - 4
        assert len(ls_l(archive)) == 5
    finally:
        m.stop()
        s.cleanup()
