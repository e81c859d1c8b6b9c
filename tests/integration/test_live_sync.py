"""Live sync against every server kind (conftest.live_server): Dovecot with
all its capabilities, Dovecot offering only IMAP4rev1 LITERAL+ SASL-IR ID
IDLE, Cyrus IMAP 3.6 and GNU Mailutils imap4d.

A second client (imaplib, servers.SecondClient) appends, sets and clears
flags, flags \\Deleted and expunges, creates, renames and deletes folders;
each change must show in the mount at the next refresh (poll_interval=2;
the steps that do not test the poll itself ask for a sync through
.convoyfs/ctl). After every step the mount equals the server as the second
client sees it: the same directories, and in each folder's directory the
same UIDs (user.convoyfs.uid) with the same flags (user.convoyfs.flags),
messages flagged \\Deleted left out (servers.converge).

On dovecot-reduced every test ends by checking Dovecot's rawlog: Dovecot
executes commands it does not announce, so only the rawlog proves that
convoyfs used none of ENABLE, CONDSTORE, QRESYNC, CHANGEDSINCE, MOVE,
ESEARCH or LIST-STATUS there.
"""

import os
import re

import harness
import servers
from servers import converge

POLL = "2"
XATTR = servers.XATTR

# client command lines that use an extension dovecot-reduced does not offer
FORBIDDEN = [re.compile(p) for p in (
    r"(?i)\b(ENABLE|CONDSTORE|QRESYNC|CHANGEDSINCE|UNCHANGEDSINCE|ESEARCH|LIST-STATUS|"
    r"MODSEQ|HIGHESTMODSEQ|VANISHED)\b",
    r"(?i)^\S+ (UID )?MOVE ",
    r"(?i)^\S+ (UID )?SEARCH RETURN\b",
    r"(?i)^\S+ LIST\b.*\bRETURN\s*\(.*\bSTATUS\b",
)]


def seed(s):
    """A small mailbox: INBOX (5, some flagged), Archive (3), Lists/dev (3)."""
    kw = ["$Work"] if s.allows_keywords() else []
    items = list(harness.genmail.gen_messages(11, 1207))
    flags = [(), ("\\Seen",), ("\\Flagged",), tuple(kw), ("\\Seen", "\\Answered")]
    s.append_many("INBOX", [(m, w, f) for (m, w), f in zip(items[:5], flags)])
    s.append_many("Archive", [(m, w, ()) for m, w in items[5:8]])
    s.append_many("Lists/dev", [(m, w, ("\\Seen",)) for m, w in items[8:11]])
    return kw


def start(s, mount):
    """Seed s, mount it with a short poll interval, check the first sync."""
    kw = seed(s)
    m = mount(s, options={"poll_interval": POLL}, idle_timeout=60)
    converge(m, s, trigger=False, what="the first sync to equal the server")
    return m, kw


def files(m, folder):
    """{uid: path} of a folder's directory in the mount."""
    d = os.path.join(m.path, folder)
    return {int(os.getxattr(os.path.join(d, f), XATTR + "uid")): os.path.join(d, f)
            for f in os.listdir(d)}


def names_and_inodes(m, folder):
    d = os.path.join(m.path, folder)
    return {f: os.stat(os.path.join(d, f)).st_ino for f in os.listdir(d)}


def uidvalidity(s, folder):
    with s.session() as c:
        typ, data = c.status(harness.quote(servers.raw_name(folder)), "(UIDVALIDITY)")
    return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))


def check_reduced_rawlog(s):
    """On dovecot-reduced: convoyfs's sessions (the harness' own are left out
    of rawlog_sessions) never used an extension the server did not offer."""
    if s.kind != "dovecot-reduced":
        return
    sessions = s.rawlog_sessions()
    assert sessions, "the rawlog holds no convoyfs session (is rawlog_dir written?)"
    assert any(re.search(r"(?im)^\S+ (UID )?FETCH ", inp) for _n, inp, _o in sessions), \
        "no FETCH in convoyfs's rawlog sessions: the check would prove nothing"
    bad = ["%s: %s" % (n, line) for n, inp, _o in sessions for line in inp.splitlines()
           if any(p.search(line) for p in FORBIDDEN)]
    assert not bad, ("convoyfs sent commands the server does not offer "
                     "(IMAP4rev1 LITERAL+ SASL-IR ID IDLE):\n" + "\n".join(bad[:20]))


def test_folder_list_and_reading(live_server, mount):
    """The first sync shows every folder and message; a file's bytes are
    the server's BODY.PEEK[], and reading sets no \\Seen."""
    s = live_server
    m, _kw = start(s, mount)
    before = s.snapshot()
    for folder in ("INBOX", "Lists/dev"):
        bodies = s.bodies(folder)
        got = files(m, folder)
        assert set(got) == set(bodies)
        for uid, path in got.items():
            with open(path, "rb") as f:
                data = f.read()
            assert data == bodies[uid], "%s UID %d: %d bytes read, %d on the server" % (
                folder, uid, len(data), len(bodies[uid]))
            assert os.stat(path).st_size == len(bodies[uid])
    assert s.snapshot() == before, "reading through the mount changed flags on the server"
    converge(m, s)
    check_reduced_rawlog(s)


def test_new_mail_shows_at_the_next_poll(live_server, mount):
    """(a) Appended mail appears by the poll alone (no sync asked for), in
    INBOX and in a nested folder, and reads back."""
    s = live_server
    m, _kw = start(s, mount)
    new = list(harness.genmail.gen_messages(5, 1208))
    s.append_many("INBOX", [(x, w, ()) for x, w in new[:3]])
    s.append_many("Lists/dev", [(x, w, ("\\Flagged",)) for x, w in new[3:]])
    converge(m, s, trigger=False, timeout=4 * int(POLL) + 20,
             what="new mail to show by the poll (poll_interval=%s)" % POLL)
    bodies = s.bodies("INBOX")
    newest = max(bodies)
    with open(files(m, "INBOX")[newest], "rb") as f:
        assert f.read() == bodies[newest]
    check_reduced_rawlog(s)


def test_flags_set_and_cleared(live_server, mount):
    """(b) \\Flagged, \\Seen and a keyword (where the server allows new
    keywords: imap4d does not) set and cleared by the second client."""
    s = live_server
    m, kw = start(s, mount)
    inbox = sorted(s.snapshot()["INBOX"])
    dev = sorted(s.snapshot()["Lists/dev"])
    inodes = names_and_inodes(m, "INBOX")
    s.store_flags("INBOX", inbox[0], "+FLAGS", ["\\Flagged"] + kw)
    s.store_flags("INBOX", [inbox[2], inbox[4]], "+FLAGS", ["\\Seen"])
    s.store_flags("Lists/dev", dev[1], "+FLAGS", ["\\Flagged"])
    tree = converge(m, s, what="flags set by another client to show")
    assert tree["INBOX"][inbox[0]] >= {"\\Flagged", *kw}
    s.store_flags("INBOX", inbox[0], "-FLAGS", ["\\Flagged"] + kw)
    s.store_flags("INBOX", [inbox[1], inbox[4]], "-FLAGS", ["\\Seen"])
    s.store_flags("INBOX", inbox[2], "-FLAGS", ["\\Flagged"])
    s.store_flags("Lists/dev", dev, "-FLAGS", ["\\Seen", "\\Flagged"])
    tree = converge(m, s, what="flags cleared by another client to show")
    assert tree["INBOX"][inbox[0]] == frozenset()
    assert all(not f for f in tree["Lists/dev"].values())
    assert names_and_inodes(m, "INBOX") == inodes, "a flag change renamed or renumbered files"
    check_reduced_rawlog(s)


def test_deleted_and_expunged(live_server, mount):
    """(c) A message flagged \\Deleted disappears from the mount; expunged
    messages disappear for lookups too; the others keep name and inode."""
    s = live_server
    m, _kw = start(s, mount)
    uids = sorted(s.snapshot()["INBOX"])
    before = files(m, "INBOX")
    inodes = names_and_inodes(m, "INBOX")
    s.store_flags("INBOX", uids[1], "+FLAGS", ["\\Deleted"])
    converge(m, s, what="a message flagged \\Deleted to be hidden")
    assert not os.path.exists(before[uids[1]])
    s.expunge_uids("INBOX", [uids[0], uids[3]])
    tree = converge(m, s, what="expunged messages to go")
    assert set(tree["INBOX"]) == {uids[2], uids[4]}
    for u in (uids[0], uids[1], uids[3]):
        assert not os.path.exists(before[u])
    kept = names_and_inodes(m, "INBOX")
    assert kept == {n: i for n, i in inodes.items() if n in kept}
    check_reduced_rawlog(s)


def test_folder_created_with_mail(live_server, mount):
    """(d) A new nested folder with messages appears, parents included."""
    s = live_server
    m, _kw = start(s, mount)
    new = list(harness.genmail.gen_messages(3, 1209))
    s.append_many("Projects/Alpha", [(x, w, ()) for x, w in new])
    tree = converge(m, s, what="a new folder to show")
    assert len(tree["Projects/Alpha"]) == 3
    bodies = s.bodies("Projects/Alpha")
    for uid, path in files(m, "Projects/Alpha").items():
        with open(path, "rb") as f:
            assert f.read() == bodies[uid]
    check_reduced_rawlog(s)


def test_folder_renamed_keeps_files(live_server, mount):
    """(e) A folder renamed by another client shows under its new name with
    the very same files: names and inode numbers kept (the server keeps
    UIDVALIDITY and UIDs across RENAME, so nothing has to be fetched again)."""
    s = live_server
    m, _kw = start(s, mount)
    before = names_and_inodes(m, "Lists/dev")
    assert len(before) == 3
    uv = uidvalidity(s, "Lists/dev")
    s.rename("Lists/dev", "Lists/devel")
    assert uidvalidity(s, "Lists/devel") == uv, "the server changed UIDVALIDITY on RENAME"
    converge(m, s, what="the renamed folder to show")
    assert not os.path.exists(os.path.join(m.path, "Lists", "dev"))
    after = names_and_inodes(m, "Lists/devel")
    assert after == before, ("the renamed folder's files changed name or inode:\n"
                             "before %s\nafter  %s" % (sorted(before.items()),
                                                      sorted(after.items())))
    check_reduced_rawlog(s)


def test_folder_deleted(live_server, mount):
    """(f) A folder deleted by another client goes from the mount with its files."""
    s = live_server
    m, _kw = start(s, mount)
    gone = files(m, "Archive")
    assert len(gone) == 3
    s.delete("Archive")
    tree = converge(m, s, what="the deleted folder to go")
    assert "Archive" not in tree
    assert not os.path.exists(os.path.join(m.path, "Archive"))
    stale = sorted(p for p in gone.values() if os.path.exists(p))
    assert not stale, ("files of the deleted folder still resolve by path after the refresh "
                       "(their entries were not invalidated): %s" % stale)
    check_reduced_rawlog(s)
