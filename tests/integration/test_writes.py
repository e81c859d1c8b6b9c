"""Writes (DESIGN §6): mv moves mail, rm trashes it (expunges inside Trash),
setfattr stores flags, mkdir/rmdir/mv of a folder create, delete and rename
it. Each is shown at once, recorded in the operation log and run by the
sync thread: on full Dovecot (UID MOVE), on Dovecot without MOVE but with
UIDPLUS (UID COPY, STORE \\Deleted, UID EXPUNGE), on Dovecot reduced to
IMAP4rev1 LITERAL+ SASL-IR ID IDLE (COPY and STORE \\Deleted; never a
plain EXPUNGE), on Cyrus, and on GNU imap4d (no UIDPLUS at all: where a
moved message landed is found among the target's new messages). A second client checks the server; the mount
tree must equal it afterwards, with moved files keeping their inodes."""

import errno
import os
import re
import subprocess

import pytest

import harness
import servers

REDUCED = servers.DOVECOT_REDUCED_CAPABILITY
PROFILES = {
    "dovecot": None,
    "no-move": REDUCED + " UIDPLUS",
    "reduced": REDUCED,
    "cyrus": "cyrus",
    "imap4d": "imap4d",
}


@pytest.fixture(params=list(PROFILES))
def server(request):
    caps = PROFILES[request.param]
    if caps in ("cyrus", "imap4d"):
        cls = servers.Cyrus if caps == "cyrus" else servers.Imap4d
        if cls.missing():
            pytest.skip(cls.missing())
        s = cls()
    else:
        s = servers.DovecotServer(imap_capability=caps) if caps else servers.DovecotServer()
        s.kind = request.param
    try:
        s.start()
        yield s
        if caps and caps not in ("cyrus", "imap4d"):
            assert hidden_commands(s) == []
    finally:
        s.cleanup()


@pytest.fixture
def dv():
    """A started full Dovecot of the test's own, stopped after it."""
    s = servers.DovecotServer()
    try:
        s.start()
        yield s
    finally:
        s.cleanup()


def gen(n, seed):
    return [(m, w, ()) for m, w in harness.genmail.gen_messages(n, seed)]


def mid_of(data):
    m = re.search(rb"(?mi)^Message-ID:[ \t]*(<[^>]*>)", data)
    return m.group(1).decode() if m else None


def server_mids(s, folder, deleted=False):
    """Message-IDs of folder on the server (those flagged \\Deleted too
    when deleted)."""
    out = []
    for uid, m in s.fetch_folder(folder, body=False).items():
        if deleted or "\\Deleted" not in m["flags"]:
            out.append(m["message_id"])
    return sorted(out)


def files(mnt, folder):
    return sorted(n for n in os.listdir(os.path.join(mnt.path, folder)) if n.endswith(".eml"))


def mid_of_file(path):
    with open(path, "rb") as f:
        return mid_of(f.read())


def wait_applied(mnt, timeout=60):
    """Until no operation waits (and a sync round after them is over)."""
    harness.wait_until(lambda: mnt.status_field("operations pending") == "0", timeout,
                       interval=0.05, what="operations applied (status: %s)" % (
                           mnt.status_field("operations pending"),))


def settle(mnt):
    """Ask for a sync of every folder and wait for it."""
    with open(os.path.join(mnt.path, ".convoyfs", "ctl"), "w") as f:
        f.write("sync\n")
    mnt.wait_idle(60)


# what a command needs offered, by a pattern of its line
NEEDS = [
    (re.compile(r"^\S+ UID MOVE ", re.I), "MOVE"),
    (re.compile(r"^\S+ MOVE ", re.I), "MOVE"),
    (re.compile(r"^\S+ UID EXPUNGE ", re.I), "UIDPLUS"),
    (re.compile(r"^\S+ UNSELECT", re.I), "UNSELECT"),
    (re.compile(r"^\S+ NOTIFY ", re.I), "NOTIFY"),
    (re.compile(r"^\S+ ENABLE ", re.I), "ENABLE"),
    (re.compile(r"RETURN \((SPECIAL-USE )?STATUS", re.I), "LIST-STATUS"),
    (re.compile(r"RETURN \(SPECIAL-USE", re.I), "SPECIAL-USE"),
    (re.compile(r"CHANGEDSINCE|UNCHANGEDSINCE|\(CONDSTORE\)", re.I), "CONDSTORE"),
    (re.compile(r"\{\d+\+\}"), "LITERAL+"),
    (re.compile(r"^\S+ IDLE", re.I), "IDLE"),
]


def hidden_commands(s, mark=None):
    """Commands sent to a reduced Dovecot that it did not offer, and any
    plain EXPUNGE (never sent to any server: it would also remove other
    clients' \\Deleted mail)."""
    offered = set(s.imap_capability.upper().split())
    bad = []
    for line in s.rawlog_text(mark).splitlines():
        if re.match(r"^\S+ EXPUNGE\s*$", line, re.I):
            bad.append(line)
        for pat, cap in NEEDS:
            if pat.search(line) and cap not in offered:
                bad.append("%s (needs %s)" % (line[:120], cap))
    return bad


def take_offline(s):
    """Stop the server and its sessions: Dovecot's imap processes outlive a
    stopped master and would go on serving our connections."""
    kids = servers.descendants(s.master_pid())
    s.stop()
    for pid in kids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    servers.wait_gone(kids, 10)


def check_tree(mnt, s):
    settle(mnt)
    got = servers.mount_tree(mnt.path)
    want = servers.server_tree(s)
    assert got == want, servers.tree_diff(got, want)


def test_mv_moves_mail_and_keeps_the_inode(server, mount):
    s = server
    s.append_many("INBOX", gen(6, 11))
    s.create("Archive")
    m = mount(s)
    inbox, arch = os.path.join(m.path, "INBOX"), os.path.join(m.path, "Archive")
    names = files(m, "INBOX")
    moved = names[:2]
    inos = {n: os.stat(os.path.join(inbox, n)).st_ino for n in moved}
    mids = {n: mid_of_file(os.path.join(inbox, n)) for n in moved}
    r = subprocess.run(["mv"] + [os.path.join(inbox, n) for n in moved] + [arch + "/"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # shown at once, same inodes, before the server has it
    assert files(m, "Archive") == sorted(moved)
    assert files(m, "INBOX") == names[2:]
    for n in moved:
        assert os.stat(os.path.join(arch, n)).st_ino == inos[n]
    wait_applied(m)
    assert server_mids(s, "Archive") == sorted(mids.values())
    assert sorted(server_mids(s, "INBOX")) == sorted(
        mid_of_file(os.path.join(inbox, n)) for n in names[2:])
    if "UIDPLUS" not in s.capabilities():
        # no UIDPLUS: the source copies stay, flagged \Deleted, hidden here
        assert len(server_mids(s, "INBOX", deleted=True)) == 6
    else:
        assert len(server_mids(s, "INBOX", deleted=True)) == 4
    check_tree(m, s)
    for n in moved:
        assert os.stat(os.path.join(arch, n)).st_ino == inos[n]



def test_rm_moves_to_trash_and_rm_in_trash_expunges(server, mount):
    s = server
    s.append_many("INBOX", gen(3, 12))
    if "Trash" not in s.selectable():
        s.create("Trash")  # imap4d makes none
    m = mount(s)
    inbox, trash = os.path.join(m.path, "INBOX"), os.path.join(m.path, "Trash")
    names = files(m, "INBOX")
    mid = mid_of_file(os.path.join(inbox, names[0]))
    os.unlink(os.path.join(inbox, names[0]))
    assert files(m, "Trash") == [names[0]]
    wait_applied(m)
    assert server_mids(s, "Trash") == [mid]
    os.unlink(os.path.join(trash, names[0]))
    assert files(m, "Trash") == []
    wait_applied(m)
    assert server_mids(s, "Trash") == []
    if "UIDPLUS" not in s.capabilities():
        assert server_mids(s, "Trash", deleted=True) == [mid]
    else:
        assert server_mids(s, "Trash", deleted=True) == []
    check_tree(m, s)


def test_rm_without_a_trash_is_refused_and_looks_again(mount):
    """imap4d makes no Trash: rm answers EPERM, keeps the mail and says why.
    A refused rm also asks for a fresh folder list, so a Trash another
    client made since the last poll is used by the next rm, not an hour
    later."""
    if servers.Imap4d.missing():
        pytest.skip(servers.Imap4d.missing())
    s = servers.Imap4d()
    try:
        s.start()
        msgs = gen(2, 14)
        s.append_many("INBOX", msgs)
        assert "Trash" not in s.selectable()
        m = mount(s, options={"poll_interval": "3600"})
        inbox = os.path.join(m.path, "INBOX")
        names = files(m, "INBOX")
        with pytest.raises(PermissionError):
            os.unlink(os.path.join(inbox, names[0]))
        assert files(m, "INBOX") == names
        assert "the server has no Trash folder" in m.stderr()
        s.create("Trash")
        with pytest.raises(PermissionError):
            os.unlink(os.path.join(inbox, names[0]))
        harness.wait_until(lambda: os.path.isdir(os.path.join(m.path, "Trash")), 30,
                           interval=0.1, what="Trash in the mount")
        mid = mid_of_file(os.path.join(inbox, names[0]))
        os.unlink(os.path.join(inbox, names[0]))
        assert files(m, "Trash") == [names[0]]
        wait_applied(m)
        assert server_mids(s, "Trash") == [mid]
        assert sorted(server_mids(s, "INBOX")) == \
            sorted(set(mid_of(d) for d, _w, _f in msgs) - {mid})
        check_tree(m, s)
    finally:
        s.cleanup()


def test_setfattr_stores_the_difference(server, mount):
    s = server
    s.append_many("INBOX", gen(2, 13))
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    path = os.path.join(inbox, files(m, "INBOX")[0])
    uid = int(os.getxattr(path, "user.convoyfs.uid"))
    # imap4d takes no keywords: a refused one is put back (other test)
    kw = "$Work" if s.allows_keywords() else "\\Draft"
    os.setxattr(path, "user.convoyfs.flags", ("\\Seen " + kw).encode())
    assert os.getxattr(path, "user.convoyfs.flags").decode().split() == sorted([kw, "\\Seen"])
    wait_applied(m)
    assert s.uid_flags("INBOX")[uid] == {"\\Seen", kw}
    # a flag another client set is kept by a change that does not name it
    s.store_flags("INBOX", uid, "+FLAGS", "\\Answered")
    settle(m)
    shown = os.getxattr(path, "user.convoyfs.flags").decode().split()
    assert shown == sorted([kw, "\\Answered", "\\Seen"])
    os.setxattr(path, "user.convoyfs.flags", (kw + " \\Answered").encode())
    wait_applied(m)
    assert s.uid_flags("INBOX")[uid] == {kw, "\\Answered"}
    with pytest.raises(OSError) as ei:
        os.setxattr(path, "user.convoyfs.flags", b"\\Bogus")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(OSError) as ei:
        os.setxattr(path, "user.convoyfs.uid", b"7")
    assert ei.value.errno == errno.EPERM


def test_flags_set_meanwhile_by_another_client_survive(dv, mount):
    """Our change is recorded offline; before it reaches the server another
    client sets a flag it does not name: both are there afterwards."""
    s = dv
    s.append_many("INBOX", gen(1, 20))
    m = mount(s)
    path = os.path.join(m.path, "INBOX", files(m, "INBOX")[0])
    uid = int(os.getxattr(path, "user.convoyfs.uid"))
    take_offline(s)
    os.setxattr(path, "user.convoyfs.flags", b"\\Flagged")
    s.start()
    mark = s.rawlog_mark()
    s.store_flags("INBOX", uid, "+FLAGS", "\\Answered")
    wait_applied(m, 120)
    assert s.uid_flags("INBOX")[uid] == {"\\Flagged", "\\Answered"}
    # CONDSTORE: the store was conditional, and found the change
    stores = [l for l in s.rawlog_text(mark).splitlines() if " UID STORE " in l.upper()]
    assert any("UNCHANGEDSINCE" in l.upper() for l in stores), stores
    assert not any("-FLAGS" in l.upper() for l in stores), stores
    settle(m)
    assert sorted(os.getxattr(path, "user.convoyfs.flags").decode().split()) == [
        "\\Answered", "\\Flagged"]


def test_folders_are_made_renamed_and_deleted(server, mount):
    s = server
    s.append_many("INBOX", gen(2, 14))
    m = mount(s)
    root = m.path
    os.mkdir(os.path.join(root, "Projects"))
    # imap4d lists INBOX without a delimiter: which one folders below a
    # new folder take is known once the server listed it
    wait_applied(m)
    settle(m)
    os.mkdir(os.path.join(root, "Projects", "Old"))
    wait_applied(m)
    assert {"Projects", "Projects/Old"} <= set(s.selectable())
    ino = os.stat(os.path.join(root, "Projects")).st_ino
    os.rename(os.path.join(root, "Projects"), os.path.join(root, "Done"))
    assert os.path.isdir(os.path.join(root, "Done", "Old"))
    assert os.stat(os.path.join(root, "Done")).st_ino == ino
    wait_applied(m)
    names = set(s.selectable())
    assert {"Done", "Done/Old"} <= names and "Projects" not in names
    with pytest.raises(OSError) as ei:
        os.rmdir(os.path.join(root, "Done"))
    assert ei.value.errno == errno.ENOTEMPTY
    os.rmdir(os.path.join(root, "Done", "Old"))
    os.rmdir(os.path.join(root, "Done"))
    wait_applied(m)
    assert not {"Done", "Done/Old"} & set(s.selectable())
    check_tree(m, s)


def test_meaningless_writes_get_clear_errors(dv, mount):
    """The errnos come from the mount, whatever the server: one Dovecot."""
    s = dv
    s.append_many("INBOX", gen(2, 15))
    s.append_many("Archive", gen(1, 16))
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    msg = os.path.join(inbox, files(m, "INBOX")[0])

    def err(want, fn, *args):
        with pytest.raises(OSError) as ei:
            fn(*args)
        assert ei.value.errno == want, "%s%r: %s" % (fn.__name__, args, ei.value)

    err(errno.EPERM, os.rename, msg, os.path.join(inbox, "renamed.eml"))
    err(errno.ENOTEMPTY, os.rmdir, os.path.join(m.path, "Archive"))
    err(errno.EPERM, os.mkdir, os.path.join(m.path, "Conversations", "x"))
    err(errno.EPERM, os.rmdir, os.path.join(m.path, "Conversations"))
    err(errno.EPERM, os.rename, msg, os.path.join(m.path, "Conversations", "x.eml"))
    err(errno.EPERM, os.rename, msg, os.path.join(m.path, "x.eml"))
    err(errno.EPERM, os.rename, os.path.join(m.path, "INBOX"), os.path.join(m.path, "Box"))
    # nothing reached the server
    assert len(server_mids(s, "INBOX")) == 2
    assert os.stat(msg).st_mode & 0o777 == 0o400


def test_mv_of_many_files_is_a_handful_of_commands(dv, mount):
    s = dv
    n = 1000
    s.append_many("INBOX", gen(n, 17))
    s.create("Archive")
    m = mount(s)
    mark = s.rawlog_mark()
    inbox = os.path.join(m.path, "INBOX")
    r = subprocess.run("mv %s/*.eml %s/" % (inbox, os.path.join(m.path, "Archive")),
                       shell=True, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_applied(m, 120)
    assert len(server_mids(s, "Archive")) == n
    assert server_mids(s, "INBOX", deleted=True) == []
    moves = [l for l in s.rawlog_text(mark).splitlines() if " UID MOVE " in l.upper()]
    assert 1 <= len(moves) <= 10, moves
    assert len(set(server_mids(s, "Archive"))) == n
    check_tree(m, s)


def test_writes_offline_wait_and_run_in_order(dv, mount):
    s = dv
    s.append_many("INBOX", gen(4, 18))
    s.create("Archive")
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    names = files(m, "INBOX")
    mids = [mid_of_file(os.path.join(inbox, n)) for n in names]
    take_offline(s)
    os.rename(os.path.join(inbox, names[0]), os.path.join(m.path, "Archive", names[0]))
    os.unlink(os.path.join(inbox, names[1]))
    os.setxattr(os.path.join(inbox, names[2]), "user.convoyfs.flags", b"\\Flagged")
    os.mkdir(os.path.join(m.path, "Later"))
    # moved into the new folder after making it: order matters
    os.rename(os.path.join(inbox, names[3]), os.path.join(m.path, "Later", names[3]))
    assert m.status_field("operations pending") == "5"
    assert files(m, "Later") == [names[3]]
    s.start()
    wait_applied(m, 120)
    assert server_mids(s, "Archive") == [mids[0]]
    assert server_mids(s, "Trash") == [mids[1]]
    assert server_mids(s, "Later") == [mids[3]]
    assert [f["flags"] for f in s.fetch_folder("INBOX", body=False).values()
            if "\\Deleted" not in f["flags"]] == [{"\\Flagged"}]
    check_tree(m, s)


def test_a_move_the_server_refuses_comes_back(dv, mount):
    s = dv
    s.append_many("INBOX", gen(2, 19))
    s.create("Gone")
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    name = files(m, "INBOX")[0]
    s.delete("Gone")
    os.rename(os.path.join(inbox, name), os.path.join(m.path, "Gone", name))
    harness.wait_until(lambda: name in files(m, "INBOX"), 30,
                       what="the refused move to come back")
    wait_applied(m)
    assert "refused" in m.status_field("last error")
    assert len(server_mids(s, "INBOX")) == 2
    check_tree(m, s)


# -- cp: APPEND ----------------------------------------------------------------------

def test_cp_appends_checked_messages_with_their_date(server, mount, tmp_path):
    s = server
    s.append_many("INBOX", gen(1, 21))
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    src = tmp_path / "new.eml"
    # LF line ends as mail tools write them; the server gets CRLF
    src.write_bytes(b"From: Ann <ann@example.org>\nSubject: copied in\n"
                    b"Message-ID: <cp.1@example.org>\n\nline one\nline two\n")
    os.utime(src, (1600000000, 1600000000))
    r = subprocess.run(["cp", "-p", str(src), inbox + "/"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shown = [n for n in files(m, "INBOX") if "copied in" in n]
    assert len(shown) == 1, files(m, "INBOX")  # at once, before the server has it
    wait_applied(m)
    got = [v for v in s.fetch_folder("INBOX").values() if v["message_id"] == "<cp.1@example.org>"]
    assert len(got) == 1
    assert got[0]["body"] == (b"From: Ann <ann@example.org>\r\nSubject: copied in\r\n"
                              b"Message-ID: <cp.1@example.org>\r\n\r\nline one\r\nline two\r\n")
    if s.kind != "imap4d":  # imap4d takes the Date: header, not APPEND's date
        assert got[0]["internaldate"] == 1600000000
    check_tree(m, s)
    if s.kind == "imap4d":
        return  # it renumbers new mail for a while: the file moves on
    (now,) = [n for n in files(m, "INBOX") if "copied in" in n]
    assert now == shown[0]
    with open(os.path.join(inbox, now), "rb") as f:
        assert f.read() == got[0]["body"]


def test_cp_of_what_is_not_a_message_fails_at_close(dv, mount, tmp_path):
    s = dv
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    bad = tmp_path / "notes.txt"
    bad.write_text("just some text\nwithout a header\n")
    for path in (str(bad), "/dev/null"):
        r = subprocess.run(["cp", path, inbox + "/x.eml"], capture_output=True, text=True)
        assert r.returncode != 0
        assert "Invalid argument" in r.stderr, r.stderr
    assert files(m, "INBOX") == []
    for where in (m.path, os.path.join(m.path, "Conversations")):
        with pytest.raises(OSError) as ei:
            open(os.path.join(where, "x.eml"), "wb").close()
        assert ei.value.errno == errno.EPERM
    assert m.status_field("operations pending") == "0"
    assert s.fetch_folder("INBOX", body=False) == {}


def test_a_30_mb_message_is_appended_byte_exact(dv, mount, tmp_path):
    s = dv
    m = mount(s)
    big = tmp_path / "big.eml"
    line = b"x" * 76 + b"\r\n"
    with open(big, "wb") as f:
        f.write(b"From: big@example.org\r\nSubject: thirty megabytes\r\n"
                b"Message-ID: <big.1@example.org>\r\n\r\n")
        for _ in range(30 * 1024 * 1024 // len(line)):
            f.write(line)
    want = big.read_bytes()

    def hwm():
        status = open("/proc/%d/status" % m.proc.pid).read()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) * 1024
    before = hwm()
    r = subprocess.run(["cp", str(big), os.path.join(m.path, "INBOX") + "/"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_applied(m, 120)
    got = list(s.fetch_folder("INBOX").values())
    assert len(got) == 1 and got[0]["body"] == want
    # staged, cached and sent in chunks: the peak grows by far less
    # than the message
    grew = hwm() - before
    assert grew < len(want) // 3, "peak RSS grew by %d for a %d-byte message" % (
        grew, len(want))


def test_an_append_the_server_refuses_is_kept_in_recovered(dv, mount, tmp_path):
    s = dv
    s.create("Gone")
    m = mount(s)
    s.delete("Gone")  # before the mount hears of it
    src = tmp_path / "keep.eml"
    body = b"From: k@example.org\r\nSubject: keep me\r\n\r\nprecious\r\n"
    src.write_bytes(body)
    r = subprocess.run(["cp", str(src), os.path.join(m.path, "Gone") + "/"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rec = os.path.join(m.path, ".convoyfs", "recovered")
    harness.wait_until(lambda: os.listdir(rec), 30, what="the refused content to be kept")
    wait_applied(m)
    (name,) = os.listdir(rec)
    with open(os.path.join(rec, name), "rb") as f:
        assert f.read() == body
    assert os.getxattr(os.path.join(rec, name), "user.convoyfs.reason")
    assert "refused" in m.status_field("last error")
    os.unlink(os.path.join(rec, name))
    assert os.listdir(rec) == []


def test_a_message_moved_by_two_clients_at_once_stays_one(dv, mount):
    """Our move waits (offline) while another client moves the same
    message elsewhere: the server keeps one copy, where the other client
    put it, and the mount shows just that."""
    s = dv
    s.append_many("INBOX", gen(2, 22))
    s.create("Archive")
    s.create("Other")
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    name = files(m, "INBOX")[0]
    mid = mid_of_file(os.path.join(inbox, name))
    uid = int(os.getxattr(os.path.join(inbox, name), "user.convoyfs.uid"))
    take_offline(s)
    os.rename(os.path.join(inbox, name), os.path.join(m.path, "Archive", name))
    s.start()
    with s.session() as c:
        c.select("INBOX")
        typ, data = c.uid("MOVE", str(uid), "Other")
        assert typ == "OK", data
    wait_applied(m, 120)
    check_tree(m, s)
    everywhere = [x for f in ("INBOX", "Archive", "Other") for x in server_mids(s, f)]
    assert everywhere.count(mid) == 1
    assert server_mids(s, "Other") == [mid]
    shown = [d for d in ("INBOX", "Archive", "Other")
             for n in files(m, d) if mid_of_file(os.path.join(m.path, d, n)) == mid]
    assert shown == ["Other"]


OVER_QUOTA = """mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=10M
  quota_max_mail_size = 16k
}"""


def test_an_append_over_the_size_limit_is_kept_in_recovered(mount, tmp_path):
    s = servers.DovecotServer(extra_conf=OVER_QUOTA)
    try:
        s.start()
        m = mount(s)
        small, big = tmp_path / "small.eml", tmp_path / "big.eml"
        small.write_bytes(b"From: a@example.org\r\nSubject: small\r\n\r\nfits\r\n")
        big_body = b"From: a@example.org\r\nSubject: too big\r\n\r\n" + b"y" * 76 * 400 + b"\r\n"
        big.write_bytes(big_body)
        r = subprocess.run(["cp", str(small), str(big), os.path.join(m.path, "INBOX") + "/"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        wait_applied(m)
        rec = os.path.join(m.path, ".convoyfs", "recovered")
        (name,) = os.listdir(rec)
        with open(os.path.join(rec, name), "rb") as f:
            assert f.read() == big_body
        reason = os.getxattr(os.path.join(rec, name), "user.convoyfs.reason").decode()
        assert "size" in reason.lower() or "quota" in reason.lower(), reason
        got = [v["body"] for v in s.fetch_folder("INBOX").values()]
        assert got == [small.read_bytes()]
        check_tree(m, s)
    finally:
        s.cleanup()


def test_a_move_of_a_message_renumbered_meanwhile_still_happens(dv, mount):
    """Another client moves the message away and back (a new UID) while
    our move waits: the server answers our UID MOVE with OK and does
    nothing. The message is found again by its Message-ID and moved, not
    silently left behind."""
    s = dv
    s.append_many("INBOX", gen(2, 23))
    s.create("Archive")
    s.create("Elsewhere")
    m = mount(s)
    inbox = os.path.join(m.path, "INBOX")
    name = files(m, "INBOX")[0]
    mid = mid_of_file(os.path.join(inbox, name))
    uid = int(os.getxattr(os.path.join(inbox, name), "user.convoyfs.uid"))
    take_offline(s)
    os.rename(os.path.join(inbox, name), os.path.join(m.path, "Archive", name))
    s.start()
    with s.session() as c:
        c.select("INBOX")
        assert c.uid("MOVE", str(uid), "Elsewhere")[0] == "OK"
        c.select("Elsewhere")
        assert c.uid("MOVE", "1:*", "INBOX")[0] == "OK"
    wait_applied(m, 120)
    check_tree(m, s)
    everywhere = [x for f in ("INBOX", "Archive", "Elsewhere") for x in server_mids(s, f)]
    assert everywhere.count(mid) == 1 and server_mids(s, "Archive") == [mid]
    assert name in files(m, "Archive")  # the same file, name and inode


def test_folder_names_the_tree_would_change_are_refused(dv, mount):
    s = dv
    m = mount(s)
    for name in (".hidden", ".Trash-0", "ctl\x01x"):
        with pytest.raises(OSError) as ei:
            os.mkdir(os.path.join(m.path, name))
        assert ei.value.errno == errno.EINVAL, name
    # longer than the tree shows a name (statvfs's f_namemax)
    assert os.statvfs(m.path).f_namemax == 200
    with pytest.raises(OSError) as ei:
        os.mkdir(os.path.join(m.path, "L" * 201))
    assert ei.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as ei:
        os.rename(os.path.join(m.path, "INBOX"), os.path.join(m.path, "é" * 101))
    assert ei.value.errno == errno.ENAMETOOLONG
    assert m.status_field("operations pending") == "0"
    for d in ("Conversations", ".convoyfs"):
        assert os.stat(os.path.join(m.path, d)).st_mode & 0o777 == 0o500
    assert os.stat(os.path.join(m.path, "INBOX")).st_mode & 0o777 == 0o700


def test_a_copy_without_its_times_takes_the_date_header(dv, mount, tmp_path):
    """cp without -p (and GIO, whose utimensat comes after close): the
    message's Date: is its INTERNALDATE, not the time of the copy."""
    s = dv
    m = mount(s)
    src = tmp_path / "dated.eml"
    src.write_bytes(b"From: d@example.org\r\nDate: Tue, 1 Jan 2019 10:00:00 +0200\r\n"
                    b"Subject: dated\r\nMessage-ID: <dated.1@example.org>\r\n\r\nx\r\n")
    r = subprocess.run(["cp", str(src), os.path.join(m.path, "INBOX") + "/"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (name,) = files(m, "INBOX")
    assert name.startswith("2019-01-01 10.00 dated"), name
    wait_applied(m)
    (got,) = s.fetch_folder("INBOX", body=False).values()
    assert got["internaldate"] == 1546329600  # 08:00 UTC
