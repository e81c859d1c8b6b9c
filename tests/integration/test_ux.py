"""Feeling at home: a mount that looks like the others (USER@HOST of type
fuse.convoyfs, default_permissions, mount.fuse3 and an fstab line with the
generic options, ro), errors with hints (TLS on a plain port, imap:// on a
TLS port, an unknown CA, a bad option), the mounted line and the first
sync's progress on a terminal, convoyfs status, log_file, and the man
page, the systemd unit and meson install."""

import datetime as dt
import email.utils
import os
import pty
import re
import select
import shutil
import stat
import subprocess
import time

import pytest

import harness
import servers
from test_connect import attempt

# the one line every failure to mount prints, and its exit status
HELP_HINT = "(see convoyfs --help)"


def opts_for(d, tmp_path, name, **extra):
    o = {"cafile": d.ca_file, "password_command": d.password_command(),
         "cache_dir": str(tmp_path / (name + "-cache")), "timeout": "5"}
    o.update(extra)
    return ",".join(k if v is None else "%s=%s" % (k, v) for k, v in o.items() if v is not False)


def refused(binary, url, tmp_path, name, opts, limit=30):
    mp = str(tmp_path / name)
    r = attempt([binary, "-f", "-o", opts, url, mp], mp, limit)
    assert r.rc is not None, "convoyfs still ran after %d s:\n%s" % (limit, r.stderr)
    assert r.rc == 1, "exit status %r:\n%s" % (r.rc, r.stderr)
    assert len(r.lines) == 1, "want one line on stderr, got:\n%s" % r.stderr
    assert not harness.mounted(mp)
    return r


# -- errors with hints ---------------------------------------------------------

@pytest.mark.parametrize("args,says", [
    (["-o", "bogus"], "unknown option bogus"),
    (["-o", "timeout=soon"], "bad value for option timeout"),
    (["-x"], "unknown flag -x"),
    ([], "need a URL and a mount point"),
], ids=["option", "value", "flag", "missing"])
def test_bad_command_line_is_one_line(convoyfs_bin, tmp_path, args, says):
    mp = str(tmp_path / "mnt")
    os.makedirs(mp)
    url = [] if args == [] else ["imaps://alice@127.0.0.1"]
    r = subprocess.run([convoyfs_bin] + args + url + ([mp] if args else []),
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert says in lines[0] and lines[0].endswith(HELP_HINT), lines[0]
    assert "usage" not in r.stderr and r.stdout == ""
    assert not harness.mounted(mp)


def test_imaps_on_a_plain_port_says_so(dovecot, convoyfs_bin, tmp_path):
    url = "imaps://alice@127.0.0.1:%d" % dovecot.plain_port
    r = refused(convoyfs_bin, url, tmp_path, "mnt", opts_for(dovecot, tmp_path, "m"))
    assert ("the server does not speak TLS on this port; for STARTTLS use imap://"
            in r.lines[0]), r.lines[0]
    assert "wrong version number" not in r.stderr
    assert r.elapsed < 5


def test_imap_on_a_tls_port_fails_fast(dovecot, convoyfs_bin, tmp_path):
    mark = dovecot.rawlog_mark()
    url = "imap://alice@127.0.0.1:%d" % dovecot.port
    # a timeout of 30 s: the hint must come long before it
    r = refused(convoyfs_bin, url, tmp_path, "mnt",
                opts_for(dovecot, tmp_path, "m", timeout="30"), limit=40)
    assert "speaks TLS from the start: use imaps://" in r.lines[0], r.lines[0]
    assert str(dovecot.port) in r.lines[0]
    assert r.elapsed < 8, "took %.1f s" % r.elapsed
    # no session of ours began (the shared mount's own go on meanwhile)
    new = [x for x in dovecot.rawlog_sessions(mark)
           if os.path.join(dovecot.rawlog_dir, x[0] + ".in") not in mark]
    assert new == []


def test_imap_to_a_slow_plain_server_still_waits(dovecot, convoyfs_bin, tmp_path):
    # a plain server that greets after 3 s: the probe finds no TLS there
    # and the STARTTLS connection goes on (to the refusal of STARTTLS)
    fake = harness.FakeImapServer(capabilities="IMAP4rev1 AUTH=PLAIN")
    relay = _DelayedGreeting(fake.port, 3.0)
    try:
        url = "imap://alice@127.0.0.1:%d" % relay.port
        r = refused(convoyfs_bin, url, tmp_path, "mnt",
                    opts_for(dovecot, tmp_path, "m", timeout="10"))
        assert "STARTTLS" in r.lines[0], r.lines[0]
        assert "imaps://" not in r.lines[0], r.lines[0]
        assert r.elapsed >= 3
        assert fake.credentials_sent() == []
    finally:
        relay.close()
        fake.close()


class _DelayedGreeting:
    """A relay to a plain server that holds the server's first bytes back
    for delay seconds, and answers a TLS hello with nothing."""

    def __init__(self, target, delay):
        import socket
        import threading
        self.target, self.delay = target, delay
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import socket
        import threading
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            self.conns += [c, u]
            threading.Thread(target=self._pipe, args=(u, c, self.delay), daemon=True).start()
            threading.Thread(target=self._pipe, args=(c, u, 0), daemon=True).start()

    def _pipe(self, src, dst, delay):
        time.sleep(delay)
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if data[:1] in (b"\x16", b"\x15"):
                    continue  # a TLS hello: a plain server says nothing useful
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def close(self):
        self.stopped = True
        self.sock.close()
        for s in self.conns:
            s.close()


def test_unknown_ca_gives_the_option(dovecot, convoyfs_bin, tmp_path):
    o = opts_for(dovecot, tmp_path, "m", cafile=False)
    r = refused(convoyfs_bin, dovecot.url(), tmp_path, "mnt", o)
    assert "cannot verify certificate" in r.lines[0]
    assert "unknown certificate authority (a private CA? -o cafile=PATH)" in r.lines[0], \
        r.lines[0]
    other = dovecot.other_ca()
    o = opts_for(dovecot, tmp_path, "m2", cafile=other.cert)
    r = refused(convoyfs_bin, dovecot.url(), tmp_path, "mnt2", o)
    assert "not issued by a CA in %s" % other.cert in r.lines[0], r.lines[0]


# -- the mount as others show it ----------------------------------------------------

def mount_line(mp):
    mp = os.path.realpath(mp)
    with open("/proc/self/mounts") as f:
        for line in f:
            src, where, kind, options = line.split()[:4]
            if re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), where) == mp:
                return src, kind, options.split(",")
    return None


def test_mounted_line_and_proc_mounts(dovecot, mount, tmp_path):
    t0 = int(time.time())
    m = mount(dovecot)
    # what holds no mail carries the mount's time, not 1970
    for d in ("", "Conversations", ".convoyfs", ".convoyfs/status"):
        mtime = os.stat(os.path.join(m.path, d)).st_mtime
        assert t0 <= mtime <= time.time(), (d, mtime, t0)
    src, kind, options = mount_line(m.path)
    assert (src, kind) == ("alice@127.0.0.1", "fuse.convoyfs")
    assert "default_permissions" in options and "rw" in options
    r = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", m.path],
                       capture_output=True, text=True, timeout=10)
    assert r.stdout.split() == ["alice@127.0.0.1", "fuse.convoyfs"], r
    r = subprocess.run(["df", "-P", m.path], capture_output=True, text=True, timeout=10)
    assert r.stdout.splitlines()[1].split()[0] == "alice@127.0.0.1", r.stdout
    # not a terminal: the mounted line and nothing else
    assert m.stderr() == "convoyfs: alice@127.0.0.1 mounted on %s\n" % m.path


def dated(i, when):
    return (b"From: a@b.test\r\nMessage-ID: <dated%d@ux.test>\r\nSubject: dated %d\r\n"
            b"Date: %s\r\n\r\nbody %d\r\n" % (
                i, i, email.utils.format_datetime(when).encode(), i), when, ())


def test_folder_mtime_is_its_newest_message(mount):
    """A folder's mtime is its newest message's date, so `ls -lt` sorts
    folders by their latest mail; an empty one and the root carry the
    mount's time. New mail moves it on, an expunge of the newest back;
    a change that leaves the newest date (an older message expunged)
    still changes the mtime's nanoseconds, so a cached listing goes."""
    d = servers.DovecotServer()
    try:
        d.start()
        base = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)
        d.append_many("Old", [dated(i, base + dt.timedelta(days=i)) for i in range(3)])
        d.append_many("New", [dated(10 + i, base + dt.timedelta(days=30 + i)) for i in range(2)])
        d.create("Empty")
        t0 = int(time.time())
        m = mount(d)

        def mtime(folder):
            """whole seconds: the nanoseconds are the stamp of the last change"""
            return os.stat(os.path.join(m.path, folder)).st_mtime_ns // 10**9

        def sync():
            with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
                f.write("sync\n")
            m.wait_idle(60)

        assert mtime("Old") == int((base + dt.timedelta(days=2)).timestamp())
        assert mtime("New") == int((base + dt.timedelta(days=31)).timestamp())
        assert t0 <= mtime("Empty") <= time.time()
        assert t0 <= mtime("") <= time.time()
        r = subprocess.run(["ls", "-t", m.path], capture_output=True, text=True, check=True)
        order = [n for n in r.stdout.split() if n in ("Old", "New")]
        assert order == ["New", "Old"], r.stdout
        # new mail: the newest date moves on
        d.append_many("Old", [dated(3, base + dt.timedelta(days=60))], create=False)
        sync()
        assert mtime("Old") == int((base + dt.timedelta(days=60)).timestamp())
        # an older message goes: same newest date, another stamp, a new listing
        before = os.stat(os.path.join(m.path, "Old")).st_mtime_ns
        names = sorted(os.listdir(os.path.join(m.path, "Old")))
        d.expunge_uids("Old", [1])
        sync()
        after = os.stat(os.path.join(m.path, "Old")).st_mtime_ns
        assert after // 10**9 == before // 10**9 and after != before
        assert sorted(os.listdir(os.path.join(m.path, "Old"))) == names[1:]
        # the newest goes: back to the one before it
        d.expunge_uids("Old", [4])
        sync()
        assert mtime("Old") == int((base + dt.timedelta(days=2)).timestamp())
    finally:
        d.cleanup()


def test_allow_other_still_checks_modes(dovecot, convoyfs_bin, tmp_path):
    """allow_other shows the mount to other users; default_permissions has
    the kernel check the modes (0700 directories, 0400 files, ours), so
    they read no mail."""
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser to act as another user")
    import tempfile
    base = tempfile.mkdtemp(prefix="convoyfs-allow-other-")
    os.chmod(base, 0o755)  # other users may reach the mount point
    mp = os.path.join(base, "mnt")
    m = harness.Mount(dovecot, mp, str(tmp_path / "cache"), binary=convoyfs_bin,
                      options={"allow_other": None})
    try:
        m.start()
        m.wait_idle(120)
        inbox = os.path.join(mp, "INBOX")
        name = sorted(os.listdir(inbox))[0]

        def as_nobody(*argv):
            return subprocess.run(["runuser", "-u", "nobody", "--"] + list(argv),
                                  capture_output=True, text=True, timeout=30)
        # the mount itself is visible (allow_other) ...
        r = as_nobody("stat", "-c", "%U %a", mp)
        assert r.returncode == 0 and r.stdout.split() == ["root", "700"], r
        # ... but its modes hold
        for argv in (("ls", mp), ("ls", inbox), ("cat", os.path.join(inbox, name))):
            r = as_nobody(*argv)
            assert r.returncode != 0 and "Permission denied" in r.stderr, (argv, r)
        # and the owner reads
        with open(os.path.join(inbox, name), "rb") as f:
            assert f.read(5)
    finally:
        m.stop()
        shutil.rmtree(base, ignore_errors=True)


# -- statfs from the IMAP QUOTA ---------------------------------------------------------

DOVECOT_QUOTA = """mail_plugins = $mail_plugins quota
protocol imap {
  mail_plugins = $mail_plugins imap_quota
}
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=10M
}
"""


def _cyrus_with_quota(tmp_path):
    """A Cyrus whose admin (cyradm) set a 5000 KiB STORAGE quota on alice."""
    import servers

    why = servers.missing("cyrus")
    if why:
        pytest.skip("cyrus: %s" % why)

    class QuotaCyrus(servers.Cyrus):
        def _write_conf(self):
            super()._write_conf()
            with open(self.conf, "a") as f:
                f.write("admins: cyradm\n")

        def _make_user(self):
            super()._make_user()
            r = subprocess.run([servers.SASLPASSWD2, "-p", "-c", "-f",
                                os.path.join(self.dir, "sasldb2"), "-u", "localhost", "cyradm"],
                               input=b"admin-Pw\n", capture_output=True, timeout=30)
            assert r.returncode == 0, r

    s = QuotaCyrus()
    try:
        s.start()
        import imaplib
        with s.session():
            pass  # alice's first login makes her INBOX, the quota's root
        a = imaplib.IMAP4_SSL("127.0.0.1", s.port, ssl_context=s.ssl_context())
        try:
            a.login("cyradm", "admin-Pw")
            typ, data = a.setquota("user/alice", "(STORAGE 5000)")
            assert typ == "OK", data
        finally:
            a.logout()
    except BaseException:
        s.cleanup()
        raise
    return s, 5000


@pytest.mark.parametrize("kind", ["dovecot", "cyrus"])
def test_statfs_shows_the_quota(kind, dovecot_factory, mount, tmp_path):
    if kind == "dovecot":
        server, limit_kib = dovecot_factory(extra_conf=DOVECOT_QUOTA), 10240
    else:
        server, limit_kib = _cyrus_with_quota(tmp_path)
    try:
        server.append("INBOX", b"Subject: big\r\nMessage-ID: <big@q>\r\n\r\n" +
                      b"x" * 300000 + b"\r\n")
        with server.session() as c:
            typ, data = c.getquotaroot("INBOX")
        used_kib = int(re.search(rb"STORAGE (\d+) (\d+)", data[1][0]).group(1))
        assert used_kib >= 290
        m = mount(server)
        st = os.statvfs(m.path)
        assert st.f_frsize * st.f_blocks == limit_kib * 1024, st
        assert st.f_frsize * (st.f_blocks - st.f_bfree) == pytest.approx(used_kib * 1024,
                                                                         abs=4096), st
        assert st.f_bavail == st.f_bfree
        r = subprocess.run(["df", "-P", "-k", m.path], capture_output=True, text=True,
                           timeout=10)
        fields = r.stdout.splitlines()[1].split()
        assert fields[0] == "alice@127.0.0.1" and int(fields[1]) == limit_kib, r.stdout
        m.stop()
    finally:
        if kind == "cyrus":
            server.cleanup()


def test_statfs_without_quota_shows_the_cache(dovecot, mount):
    # the sample server has no quota plugin: df shows the body cache, its
    # budget (cache_size) and what it holds
    m = mount(dovecot, options={"cache_size": "64"})
    st = os.statvfs(m.path)
    assert st.f_frsize * st.f_blocks == 64 * 1024 * 1024
    assert st.f_blocks == st.f_bfree  # nothing read yet
    inbox = os.path.join(m.path, "INBOX")
    names = sorted(os.listdir(inbox))[:5]
    size = 0
    for n in names:
        with open(os.path.join(inbox, n), "rb") as f:
            size += len(f.read())
    st = os.statvfs(m.path)
    assert st.f_frsize * (st.f_blocks - st.f_bfree) == pytest.approx(size, abs=5 * 4096)


def test_debug_flag_shows_the_imap_conversation(dovecot, mount):
    m = mount(dovecot, extra_args=("-d",))
    os.listdir(os.path.join(m.path, "INBOX"))
    m.stop()
    err = m.stderr()
    assert re.search(r"(?m)^convoyfs: debug: imap: C: \d+ EXAMINE ", err), err[-3000:]
    assert re.search(r"(?m)^convoyfs: debug: imap: S: \* OK ", err), err[-3000:]
    assert "private bytes not shown" in err
    assert dovecot.password not in err
    assert "LOOKUP" in err  # and FUSE's own requests
    assert "first sync:" not in err


def _daemons_of(mp):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if mp.encode() in args and args[0].endswith(b"convoyfs"):
            out.append(int(p))
    return out


def test_fstab_line_through_mount_fuse3(dovecot, convoyfs_bin, tmp_path):
    if not shutil.which("mount.fuse3") and not os.path.exists("/sbin/mount.fuse3"):
        pytest.skip("mount.fuse3 is not installed (package fuse3)")
    if os.geteuid() != 0:
        pytest.skip("mount -T needs root")
    mp = str(tmp_path / "mnt")
    os.makedirs(mp)
    # what mount(8) and mount.fuse3 pass from an ordinary fstab line, and
    # a password_command with spaces written \040 as fstab wants
    opts = ",".join([
        "noauto", "user", "_netdev", "x-systemd.automount", "noatime", "dev", "suid", "exec",
        "ro", "cafile=" + dovecot.ca_file, "cache_dir=" + str(tmp_path / "cache"),
        "password_command=" + dovecot.password_command().replace(" ", "\\040"),
        "log_file=" + str(tmp_path / "convoyfs.log"), "debug=sync"])
    fstab = tmp_path / "fstab"
    fstab.write_text("# an fstab of the test's own\n%s#%s %s fuse %s 0 0\n" % (
        convoyfs_bin, dovecot.url(), mp, opts))
    daemons = []
    try:
        r = subprocess.run(["mount", "-T", str(fstab), mp], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        daemons = _daemons_of(mp)
        assert r.returncode == 0, r
        src, kind, options = mount_line(mp)
        assert (src, kind) == ("alice@127.0.0.1", "fuse.convoyfs")
        assert "ro" in options and "default_permissions" in options, options
        harness.wait_until(lambda: os.path.isdir(os.path.join(mp, "INBOX")), 30,
                           what="INBOX in the mount")
        harness.wait_until(lambda: len(os.listdir(os.path.join(mp, "INBOX"))) > 0, 60,
                           what="a message in INBOX")
        name = sorted(os.listdir(os.path.join(mp, "INBOX")))[0]
        with open(os.path.join(mp, "INBOX", name), "rb") as f:
            assert f.read(5)
        for write in (lambda: open(os.path.join(mp, "INBOX", "new.eml"), "wb"),
                      lambda: os.mkdir(os.path.join(mp, "NewFolder")),
                      lambda: os.rename(os.path.join(mp, "INBOX", name),
                                        os.path.join(mp, "Trash", name))):
            with pytest.raises(OSError) as e:
                write()
            assert e.value.errno == 30, e.value  # EROFS
        # in the background, the log goes to log_file (not to syslog)
        log = tmp_path / "convoyfs.log"
        assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
        assert re.search(r"(?m)^\S+ \S+ convoyfs\[\d+\]: debug: sync: ", log.read_text()), \
            log.read_text()[:2000]
        r = subprocess.run(["umount", mp], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r
        harness.wait_until(lambda: not _daemons_of(mp), 15, what="the daemon to exit")
    finally:
        if harness.mounted(mp):
            harness.fusermount(mp, lazy=True)
        for pid in daemons:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


# -- the first sync on a terminal ---------------------------------------------------

PROGRESS = re.compile(r"\r\x1b\[Kfirst sync: (\d+)/(\d+) folders, (\d+)/(\d+) messages"
                      r"(, \d+/s, (\d+h)?(\d+m)?\d+s? left)?")
DONE = re.compile(r"convoyfs: first sync done: (\d+) messages in (\d+) folders \(\S+\)\n")


def test_progress_on_a_terminal(dovecot, server_state, convoyfs_bin, tmp_path):
    mp = str(tmp_path / "mnt")
    os.makedirs(mp)
    argv = [convoyfs_bin, "-f", "-o", opts_for(dovecot, tmp_path, "m", timeout="10"),
            dovecot.url(), mp]
    text, rc = _run_on_a_terminal(argv, mp, DONE)
    assert rc == 0
    assert text.startswith("convoyfs: alice@127.0.0.1 mounted on %s\n" % mp), text[:300]
    draws = PROGRESS.findall(text)
    assert draws, "no progress line drawn:\n%r" % text[:2000]
    for done, folders, known, total, *_ in draws:
        assert int(done) <= int(folders) and int(known) <= int(total)
    n, folders = map(int, DONE.search(text).groups())
    assert n == server_state.total()
    assert folders == len(server_state.messages)
    # the done line ends the progress: nothing is redrawn after it
    assert text.endswith(")\n"), text[-300:]


def _run_on_a_terminal(argv, mp, until, limit=180):
    """Run convoyfs with stderr on a pseudo-terminal until its output
    matches @until; unmount; return (the output, \r\n made \n; status)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + limit
        while not until.search(out.decode(errors="replace").replace("\r\n", "\n")):
            assert time.monotonic() < deadline, "no match:\n%r" % out[-2000:]
            assert p.poll() is None, "convoyfs exited:\n%r" % out
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
    finally:
        if harness.mounted(mp):
            harness.fusermount(mp)
        try:
            rc = p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait(10)
        os.close(master)
    return out.decode(errors="replace").replace("\r\n", "\n"), rc


def test_progress_of_a_long_first_sync(fresh_dovecot, convoyfs_bin, tmp_path):
    # enough mail that the first sync takes seconds: the line is redrawn,
    # with a rate and the time left once there is one
    from test_grow import fill_maildir
    n = 30000
    now = int(time.time())
    fill_maildir(fresh_dovecot, "Big", [now - 86400 * 3650 + i * 3600 for i in range(n)], "big")
    mp = str(tmp_path / "mnt")
    os.makedirs(mp)
    argv = [convoyfs_bin, "-f", "-o", opts_for(fresh_dovecot, tmp_path, "m", timeout="30"),
            fresh_dovecot.url(), mp]
    text, rc = _run_on_a_terminal(argv, mp, DONE, limit=300)
    assert rc == 0
    draws = PROGRESS.findall(text)
    assert len(draws) >= 3, text[:3000]
    known = [int(d[2]) for d in draws]
    assert known == sorted(known) and known[-1] > known[0], known
    assert any(d[4] for d in draws), "no rate and time left shown:\n%s" % text[:3000]
    assert int(DONE.search(text).group(1)) == n
    # redrawn in place: no line ends between the mounted line and the done line
    body = text.split("\n", 1)[1]
    assert body.count("\n") == 1 and body.endswith(")\n"), body[-500:]


# -- convoyfs status, the status file, log_file ---------------------------------------

def test_status_command(dovecot, server_state, mount, convoyfs_bin, tmp_path):
    m = mount(dovecot)
    for verb in ("status", "--status"):
        r = subprocess.run([convoyfs_bin, verb, m.path], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r
        lines = r.stdout.splitlines()
        assert re.match(r"^account:\s+alice@127\.0\.0\.1:%d$" % dovecot.port, lines[0]), lines
        assert any(re.match(r"^state:\s+idle$", l) for l in lines), r.stdout
        assert any(re.match(r"^last error:\s+none$", l) for l in lines), r.stdout
        header = [l for l in lines if re.match(r"^\s+folder\s+known/total\s+state$", l)]
        assert header, r.stdout
        n = len(server_state.messages["INBOX"])
        assert any(re.match(r"^\s+INBOX\s+%d/%d\s+complete$" % (n, n), l) for l in lines), \
            r.stdout
        rows = lines[lines.index(header[0]) + 1:]
        assert len(rows) == len(server_state.messages), rows
    # a directory that is no convoyfs mount: one line, status 1
    r = subprocess.run([convoyfs_bin, "status", str(tmp_path)], capture_output=True,
                       text=True, timeout=20)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r
    assert "not a convoyfs mount" in r.stderr
    # the file reports its real size
    path = os.path.join(m.path, ".convoyfs", "status")
    with open(path, "rb") as f:
        data = f.read()
    assert os.stat(path).st_size == len(data)


def test_log_file(dovecot, mount, tmp_path):
    log = tmp_path / "logs" / "convoyfs.log"
    log.parent.mkdir()
    m = mount(dovecot, options={"log_file": str(log)})
    with pytest.raises(OSError):
        with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
            f.write("frobnicate\n")
    harness.wait_until(lambda: log.exists() and "unknown command" in log.read_text(), 10,
                       what="the ctl warning in the log file")
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
    line = [l for l in log.read_text().splitlines() if "unknown command" in l][0]
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d convoyfs\[\d+\]: warning: fs: ctl: ", line)
    # the log went to the file, not to stderr
    assert "unknown command" not in m.stderr()


def test_log_file_that_cannot_be_opened(dovecot, convoyfs_bin, tmp_path):
    o = opts_for(dovecot, tmp_path, "m", log_file=str(tmp_path / "no" / "such" / "log"))
    r = refused(convoyfs_bin, dovecot.url(), tmp_path, "mnt", o)
    assert "cannot open log file" in r.lines[0]


# -- the manual page, the unit, meson install -----------------------------------------------

MAN = os.path.join(harness.REPO, "doc", "convoyfs.1")
UNIT = os.path.join(harness.REPO, "dist", "convoyfs@.service.in")


def help_options(text):
    """The -o option names that --help lists under "options (-o):"."""
    block = text.split("options (-o):\n", 1)[1].split("\n\n", 1)[0]
    return {m.group(1) for m in re.finditer(r"(?m)^  ([a-z_]+)[= ]", block)}


def man_options(text):
    """The option names of the man page's MOUNT OPTIONS section (the tagged
    paragraphs, before the subsection of options that are ignored)."""
    sec = text.split(".SH MOUNT OPTIONS\n", 1)[1].split("\n.S", 1)[0]
    return {m.group(1) for m in re.finditer(r"(?m)^\.TP\n\.B[IR]? ([a-z_]+)", sec)}


def test_help_and_man_page_list_the_same_options(convoyfs_bin):
    r = subprocess.run([convoyfs_bin, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    helped = help_options(r.stdout)
    with open(MAN) as f:
        man = f.read()
    manned = man_options(man)
    assert len(helped) >= 14, helped
    assert helped == manned, "only in --help: %s; only in the man page: %s" % (
        sorted(helped - manned), sorted(manned - helped))
    # and the man page is well-formed troff
    if shutil.which("groff"):
        g = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", MAN],
                           capture_output=True, text=True, timeout=30)
        assert g.returncode == 0 and not g.stderr.strip(), g.stderr
    for part in ("EXIT STATUS", "user.convoyfs.flags", ".convoyfs/status",
                 ".convoyfs/ctl", "Conversations/", "rm"):
        assert part in man, part


def test_systemd_unit_verifies(convoyfs_bin, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (package systemd)")
    with open(UNIT) as f:
        unit = f.read()
    assert "@BINDIR@/convoyfs -f " in unit
    # the unit with this build's binary, an instance of it, and the man
    # page where the unit's Documentation= looks
    d = tmp_path / "units"
    (d / "man" / "man1").mkdir(parents=True)
    shutil.copy(MAN, str(d / "man" / "man1"))
    (d / "run").mkdir()
    path = d / "convoyfs@work.service"
    path.write_text(unit.replace("@BINDIR@", os.path.dirname(convoyfs_bin)))
    env = dict(os.environ, XDG_RUNTIME_DIR=str(d / "run"), MANPATH=str(d / "man"))
    r = subprocess.run(["systemd-analyze", "verify", "--user", str(path)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r
    # and it does fail a broken unit, so the check above means something
    bad = d / "convoyfs@bad.service"
    bad.write_text(path.read_text().replace("ExecStart=", "ExecStrat="))
    r = subprocess.run(["systemd-analyze", "verify", "--user", str(bad)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def test_meson_install_into_destdir(convoyfs_bin, tmp_path):
    build = os.path.dirname(convoyfs_bin)
    if not os.path.exists(os.path.join(build, "build.ninja")):
        pytest.skip("%s is not a meson build directory" % build)
    dest = tmp_path / "dest"
    r = subprocess.run(["meson", "install", "-C", build, "--no-rebuild", "--quiet",
                        "--destdir", str(dest)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r
    found = {os.path.relpath(os.path.join(root, f), str(dest))
             for root, _, files in os.walk(str(dest)) for f in files}
    assert any(f.endswith("/bin/convoyfs") for f in found), found
    assert any(f.endswith("/share/man/man1/convoyfs.1") for f in found), found
    units = [f for f in found if f.endswith("/lib/systemd/user/convoyfs@.service")]
    assert units, found
    with open(os.path.join(str(dest), units[0])) as f:
        unit = f.read()
    # the installed unit names the installed binary
    prefix = units[0][:-len("/lib/systemd/user/convoyfs@.service")]
    assert "ExecStart=/%s/bin/convoyfs -f " % prefix in unit, unit
