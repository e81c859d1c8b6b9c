"""File managers (GIO, the layer under Nautilus, Thunar's gvfs, Files):
what `gio info`, `gio move`, `gio rename`, `gio remove`, `gio trash` and
`gio copy` do on a mount of a private Dovecot, checked on the server with
a second client.

GIO runs with a HOME and XDG_DATA_HOME of the test's own, the local VFS
only (no D-Bus, no gvfsd), and, when the tests run as root, without
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (setpriv): root may write any
file whatever its mode, so only then does GIO's access() answer what the
owner of the mount, an ordinary user, would be told.

gio trash of a file outside the home's device looks for $TOPDIR/.Trash
(sticky) and then $TOPDIR/.Trash-$UID at the top of the mount, creating it
with mkdir; it never uses $XDG_DATA_HOME/Trash for it and never copies.
Whatever it does, no mail may be lost: it ends in the IMAP Trash, or GIO
refuses and the account is as it was (no folder made for GIO's trash).
"""

import errno
import os
import re
import shutil
import subprocess

import pytest

import harness
import servers

GIO = shutil.which("gio")


@pytest.fixture
def server():
    if GIO is None:
        pytest.skip("gio is not installed (Debian package libglib2.0-bin)")
    s = servers.DovecotServer()
    try:
        s.start()
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def gio(tmp_path):
    """gio(*args) -> CompletedProcess (text), run as the mount's owner would."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
               GIO_USE_VFS="local", GIO_USE_VOLUME_MONITOR="unix", LC_ALL="C.UTF-8",
               LANGUAGE="C")
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is absent: "
                        "GIO's access() would say root may write anything")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]

    def run(*args):
        return subprocess.run(prefix + [GIO, *args], capture_output=True, text=True,
                              env=env, timeout=60)
    run.home_trash = home / "data" / "Trash"
    return run


def gen(n, seed):
    return [(m, w, ()) for m, w in harness.genmail.gen_messages(n, seed)]


def files(mnt, folder):
    return sorted(n for n in os.listdir(os.path.join(mnt.path, folder)) if n.endswith(".eml"))


def mid_of_file(path):
    with open(path, "rb") as f:
        m = re.search(rb"(?mi)^Message-ID:[ \t]*(<[^>]*>)", f.read())
    return m.group(1).decode() if m else None


def server_mids(s, folder):
    """Message-IDs of the messages of folder not flagged \\Deleted."""
    return sorted(m["message_id"] for m in s.fetch_folder(folder, body=False).values()
                  if "\\Deleted" not in m["flags"])


def folder_names(s):
    return sorted(name for name, *_ in s.list_folders())


def wait_applied(mnt, timeout=60):
    harness.wait_until(lambda: mnt.status_field("operations pending") == "0", timeout,
                       interval=0.05, what="operations applied (status: %s)" % (
                           mnt.status_field("operations pending"),))


def check_tree(mnt, s):
    """The mount shows exactly what the server holds, after a sync."""
    servers.converge(mnt, s, timeout=60)


def info(gio, path):
    """{attribute: value} from gio info."""
    r = gio("info", "-a", "access::*,unix::mode,standard::content-type", path)
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^\s+([a-z-]+::[a-z-]+): (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def setup_mail(s, mount, n=4):
    s.append_many("INBOX", gen(n, 41))
    s.create("Archive")
    m = mount(s)
    return m, os.path.join(m.path, "INBOX")


def test_info_message_read_only_folder_writable(server, mount, gio):
    s = server
    m, inbox = setup_mail(s, mount)
    name = files(m, "INBOX")[0]
    msg = info(gio, os.path.join(inbox, name))
    assert int(msg["unix::mode"]) & 0o7777 == 0o400
    assert msg["access::can-read"] == "TRUE"
    assert msg["access::can-write"] == "FALSE"
    assert msg["access::can-execute"] == "FALSE"
    assert msg["access::can-delete"] == "TRUE"
    assert msg["access::can-rename"] == "TRUE"
    assert msg["standard::content-type"] == "message/rfc822"
    for folder in ("INBOX", "Archive", "Trash"):
        d = info(gio, os.path.join(m.path, folder))
        assert int(d["unix::mode"]) & 0o7777 == 0o700, folder
        assert d["access::can-write"] == "TRUE", folder
        assert d["access::can-execute"] == "TRUE", folder
        assert d["access::can-rename"] == "TRUE", folder
    root = info(gio, m.path)
    assert root["access::can-write"] == "TRUE"  # mkdir there makes a folder
    # typing by name: looking at every file read no body
    r = gio("list", "-a", "standard::content-type,access::can-write", inbox)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("message/rfc822") == 4
    assert m.bodies_fetched() == 0


def test_info_of_the_virtual_directories_tells_the_truth(server, mount, gio):
    """Conversations/ and .convoyfs/ take no new entries: a file manager
    must not be told it may make a folder or a file there."""
    s = server
    m, inbox = setup_mail(s, mount)
    for d in ("Conversations", ".convoyfs"):
        path = os.path.join(m.path, d)
        with pytest.raises(OSError) as e:
            os.mkdir(os.path.join(path, "new-folder"))
        assert e.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES), e.value
        assert info(gio, path)["access::can-write"] == "FALSE", (
            "%s/ refuses mkdir (%s) but GIO is told it is writable (mode %o)"
            % (d, errno.errorcode[e.value.errno], os.stat(path).st_mode & 0o7777))


def test_gio_move_to_another_folder_is_a_move(server, mount, gio):
    s = server
    m, inbox = setup_mail(s, mount)
    names = files(m, "INBOX")
    path = os.path.join(inbox, names[0])
    ino = os.stat(path).st_ino
    mid = mid_of_file(path)
    r = gio("move", path, os.path.join(m.path, "Archive") + "/")
    assert r.returncode == 0, r.stderr
    assert files(m, "Archive") == [names[0]]
    assert os.stat(os.path.join(m.path, "Archive", names[0])).st_ino == ino
    assert files(m, "INBOX") == names[1:]
    wait_applied(m)
    assert server_mids(s, "Archive") == [mid]
    assert mid not in server_mids(s, "INBOX")
    assert len(server_mids(s, "INBOX")) == 3
    check_tree(m, s)


def test_gio_move_right_after_another_client_moved_the_message_back(server, mount, gio):
    """Another client (a phone) archives the messages and puts them back
    just before the user drags one: the server gave them new UIDs that the
    mount has not heard of yet. The move must still happen (the message is
    found again by its Message-ID), not be answered "OK No messages found"
    and then quietly undone by the next refresh."""
    s = server
    m, inbox = setup_mail(s, mount)
    names = files(m, "INBOX")
    path = os.path.join(inbox, names[0])
    mid = mid_of_file(path)
    with s.session() as c:
        for src, dst in (("INBOX", "Archive"), ("Archive", "INBOX")):
            typ, data = c.select(src)
            assert typ == "OK", data
            typ, data = c.uid("MOVE", "1:*", dst)
            assert typ == "OK", data
    r = gio("move", path, os.path.join(m.path, "Archive") + "/")
    assert r.returncode == 0, r.stderr
    wait_applied(m)
    servers.sync_now(m)
    m.wait_idle(60)
    assert server_mids(s, "Archive") == [mid], (
        "the move was lost: Archive holds %s, INBOX %d messages; the mount shows %s in "
        "Archive" % (server_mids(s, "Archive"), len(server_mids(s, "INBOX")),
                     files(m, "Archive")))
    assert mid not in server_mids(s, "INBOX")
    check_tree(m, s)


def test_gio_rename_of_a_folder_renames_it(server, mount, gio):
    s = server
    m, inbox = setup_mail(s, mount)
    mids = server_mids(s, "INBOX")
    archive = os.path.join(m.path, "Archive")
    r = gio("move", os.path.join(inbox, files(m, "INBOX")[0]), archive + "/")
    assert r.returncode == 0, r.stderr
    r = gio("rename", archive, "Old mail")
    assert r.returncode == 0, r.stderr
    assert os.path.isdir(os.path.join(m.path, "Old mail"))
    assert not os.path.exists(archive)
    wait_applied(m)
    names = folder_names(s)
    assert "Old mail" in names and "Archive" not in names
    assert sorted(server_mids(s, "Old mail") + server_mids(s, "INBOX")) == mids
    assert len(server_mids(s, "Old mail")) == 1
    check_tree(m, s)


def test_gio_rename_of_a_message_is_refused_and_changes_nothing(server, mount, gio):
    s = server
    m, inbox = setup_mail(s, mount)
    names = files(m, "INBOX")
    before = servers.server_tree(s)
    r = gio("rename", os.path.join(inbox, names[0]), "renamed.eml")
    assert r.returncode != 0, r.stdout
    assert files(m, "INBOX") == names
    wait_applied(m)
    assert servers.server_tree(s) == before
    check_tree(m, s)


def test_gio_mkdir_makes_a_folder_under_the_name_asked_for(server, mount, gio):
    """A file manager's New Folder: CREATE. A name the mount cannot show as
    it was given (a leading '.', shown as '_.') is refused, not made under
    another name: GIO's trash mkdirs .Trash-$UID exactly so."""
    s = server
    m, inbox = setup_mail(s, mount)
    r = gio("mkdir", os.path.join(m.path, "Projects"))
    assert r.returncode == 0, r.stderr
    assert os.path.isdir(os.path.join(m.path, "Projects"))
    wait_applied(m)
    assert "Projects" in folder_names(s)
    check_tree(m, s)
    before = folder_names(s)
    root = sorted(os.listdir(m.path))
    r = gio("mkdir", os.path.join(m.path, ".hidden"))
    wait_applied(m)
    servers.sync_now(m)
    m.wait_idle(60)
    if r.returncode == 0:
        # readdir, not lookup: the kernel keeps the dentry mkdir returned
        top = os.listdir(m.path)
        assert ".hidden" in top, (
            "mkdir .hidden succeeded, but the top lists %s (the server has %s)"
            % (sorted(top), folder_names(s)))
    else:
        assert folder_names(s) == before, "a refused mkdir made a folder on the server"
        assert sorted(os.listdir(m.path)) == root


def test_gio_remove_ends_in_the_imap_trash(server, mount, gio):
    s = server
    m, inbox = setup_mail(s, mount)
    names = files(m, "INBOX")
    path = os.path.join(inbox, names[0])
    mid = mid_of_file(path)
    r = gio("remove", path)
    assert r.returncode == 0, r.stderr
    assert files(m, "INBOX") == names[1:]
    assert files(m, "Trash") == [names[0]]
    wait_applied(m)
    assert server_mids(s, "Trash") == [mid]
    assert mid not in server_mids(s, "INBOX")
    check_tree(m, s)
    # gio remove inside Trash: gone for good
    r = gio("remove", os.path.join(m.path, "Trash", names[0]))
    assert r.returncode == 0, r.stderr
    assert files(m, "Trash") == []
    wait_applied(m)
    assert server_mids(s, "Trash") == []
    assert len(server_mids(s, "INBOX")) == 3
    check_tree(m, s)


def test_gio_trash_loses_no_mail_and_leaves_no_trace(server, mount, gio):
    """Either the message lands in the IMAP Trash, or GIO refuses and the
    account is as it was: no folder made for GIO's .Trash-$UID, the message
    where it was, nothing copied to the home's trash. Tried twice: the
    second attempt meets whatever the first one left."""
    s = server
    m, inbox = setup_mail(s, mount)
    folders = folder_names(s)
    names = files(m, "INBOX")
    root_before = sorted(os.listdir(m.path))
    for name in names[:2]:
        path = os.path.join(inbox, name)
        mid = mid_of_file(path)
        before = {f: server_mids(s, f) for f in ("INBOX", "Trash")}
        r = gio("trash", path)
        wait_applied(m)
        if r.returncode == 0:
            assert not os.path.exists(path)
            assert name in files(m, "Trash")
            assert server_mids(s, "Trash") == sorted(before["Trash"] + [mid])
            assert mid not in server_mids(s, "INBOX")
        else:
            assert "Unable to" in r.stderr, r.stderr
            assert os.path.exists(path)
            assert {f: server_mids(s, f) for f in ("INBOX", "Trash")} == before
        assert folder_names(s) == folders, (
            "gio trash made folders on the server (gio said: %s)" % r.stderr.strip())
        # a .Trash-$UID the mount serves (not a folder) may show at the top
        assert sorted(n for n in os.listdir(m.path)
                      if r.returncode != 0 or n != ".Trash-%d" % os.geteuid()) == root_before
        assert not (gio.home_trash / "files").exists() or \
            os.listdir(gio.home_trash / "files") == []
    assert len(server_mids(s, "INBOX")) + len(server_mids(s, "Trash")) == len(names)
    check_tree(m, s)


def copy_or_skip(r):
    if r.returncode != 0 and "Read-only file system" in r.stderr:
        pytest.skip("copying into a folder answers EROFS in this build (APPEND not "
                    "there yet): %s" % r.stderr.strip())


def test_gio_copy_within_the_mount_appends_a_copy(server, mount, gio):
    s = server
    m, inbox = setup_mail(s, mount)
    names = files(m, "INBOX")
    path = os.path.join(inbox, names[0])
    with open(path, "rb") as f:
        data = f.read()
    mid = mid_of_file(path)
    r = gio("copy", path, os.path.join(m.path, "Archive") + "/")
    copy_or_skip(r)
    assert r.returncode == 0, r.stderr
    wait_applied(m)
    assert server_mids(s, "Archive") == [mid]
    assert mid in server_mids(s, "INBOX")
    got = list(s.fetch_folder("Archive").values())
    assert [g["body"] for g in got] == [data]
    check_tree(m, s)
    arch = files(m, "Archive")
    assert len(arch) == 1
    with open(os.path.join(m.path, "Archive", arch[0]), "rb") as f:
        assert f.read() == data


def test_gio_copy_of_a_local_file_into_a_folder(server, mount, gio, tmp_path):
    s = server
    m, inbox = setup_mail(s, mount)
    data = next(iter(harness.genmail.gen_messages(1, 77)))[0]
    src = tmp_path / "letter.eml"
    src.write_bytes(data)
    r = gio("copy", str(src), os.path.join(m.path, "Archive") + "/")
    copy_or_skip(r)
    assert r.returncode == 0, r.stderr
    wait_applied(m)
    got = list(s.fetch_folder("Archive").values())
    assert [g["body"] for g in got] == [data]
    # not a message: refused at close, nothing sent
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"just some words\nand no header at all\n")
    r = gio("copy", str(junk), os.path.join(m.path, "Archive") + "/")
    assert r.returncode != 0, r.stdout
    wait_applied(m)
    assert [g["body"] for g in s.fetch_folder("Archive").values()] == [data]
    check_tree(m, s)
