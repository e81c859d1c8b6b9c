"""A mount made with -o ro is read-only: every write answers EROFS, through
system calls and through the everyday tools, and the server is left as it
was. (Writes of a normal mount: test_writes.py.)"""

import errno
import os
import subprocess

import pytest

import harness


@pytest.fixture
def sample(dovecot, mount, server_state):
    root = mount(dovecot, name="ro", options={"ro": None}).path
    inbox = os.path.join(root, server_state.dir_of("INBOX"))
    msg = os.path.join(inbox, sorted(os.listdir(inbox))[0])
    other = os.path.join(root, server_state.dir_of("Archive"))
    empty = os.path.join(root, server_state.dir_of("Sent"))
    assert os.listdir(empty) == []
    return root, inbox, msg, other, empty


def erofs(fn, *args):
    with pytest.raises(OSError) as ei:
        fn(*args)
    assert ei.value.errno == errno.EROFS, "%s%r: %s" % (fn.__name__, args, ei.value)


def test_system_calls_answer_erofs(sample):
    root, inbox, msg, other, empty = sample
    new = os.path.join(inbox, "new message.eml")
    erofs(os.open, new, os.O_WRONLY | os.O_CREAT, 0o600)
    erofs(os.open, msg, os.O_WRONLY)
    erofs(os.open, msg, os.O_RDWR)
    erofs(os.open, msg, os.O_WRONLY | os.O_TRUNC)
    erofs(os.truncate, msg, 0)
    erofs(os.unlink, msg)
    erofs(os.rename, msg, os.path.join(other, os.path.basename(msg)))
    erofs(os.rename, msg, os.path.join(inbox, "renamed.eml"))
    erofs(os.mkdir, os.path.join(root, "New folder"))
    erofs(os.mkdir, os.path.join(inbox, "sub"))
    erofs(os.rmdir, empty)
    erofs(os.rename, empty, os.path.join(root, "Sent2"))
    erofs(os.chmod, msg, 0o644)
    erofs(os.utime, msg, (0, 0))
    erofs(os.symlink, "x", os.path.join(inbox, "link"))
    erofs(os.link, msg, os.path.join(inbox, "hardlink.eml"))
    erofs(os.mknod, os.path.join(inbox, "fifo"), 0o600 | 0o010000)
    erofs(os.setxattr, msg, "user.convoyfs.flags", b"\\Seen")
    erofs(os.setxattr, msg, "user.other", b"x")
    erofs(os.removexattr, msg, "user.convoyfs.flags")
    erofs(os.open, os.path.join(root, harness.CONTROL_DIR, "status"), os.O_WRONLY)


TOOLS = [
    ("touch", ["touch", "{inbox}/touched.eml"]),
    ("touch existing", ["touch", "{msg}"]),
    ("mkdir", ["mkdir", "{root}/made"]),
    ("rm", ["rm", "-f", "{msg}"]),
    ("rmdir", ["rmdir", "{empty}"]),
    ("mv", ["mv", "{msg}", "{other}/"]),
    ("cp", ["cp", "/etc/passwd", "{inbox}/copied.eml"]),
    ("setfattr", ["setfattr", "-n", "user.convoyfs.flags", "-v", "\\\\Flagged", "{msg}"]),
]


@pytest.mark.parametrize("what,argv", TOOLS, ids=[t[0] for t in TOOLS])
def test_tools_report_read_only(sample, what, argv):
    root, inbox, msg, other, empty = sample
    argv = [a.format(root=root, inbox=inbox, msg=msg, other=other, empty=empty) for a in argv]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0, "%s succeeded" % what
    assert "Read-only file system" in r.stderr, r.stderr


def test_server_unchanged_by_refused_writes(sample, dovecot, server_state):
    root, inbox, msg, other, empty = sample
    for fn, args in [(os.unlink, (msg,)), (os.mkdir, (os.path.join(root, "zz"),)),
                     (os.rename, (msg, os.path.join(other, "x.eml")))]:
        with pytest.raises(OSError):
            fn(*args)
    assert os.path.exists(msg)
    assert not os.path.exists(os.path.join(root, "zz"))
    with dovecot.session() as c:
        assert sorted(f[1] for f in dovecot.list_folders(c)) == sorted(
            f[1] for f in server_state.folders)
        for folder in ("INBOX", "Archive"):
            assert dovecot.flags_of(folder, imap=c) == {
                u: m["flags"] for u, m in server_state.messages[folder].items()}
