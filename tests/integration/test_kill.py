"""kill -9 at every step of the executor (DESIGN §6): the abort hook
(CONVOYFS_TEST_KILL_AT_STEP=N) ends the daemon at the Nth step boundary
of the ops of one command, a new mount on the same cache finishes them,
and every message must exist exactly once on the server, where the
command puts it. Apart from test_writes.py so that a parallel run can
give these long tests a worker of their own."""

import contextlib
import glob
import os
import shlex
import subprocess
import time

import pytest

import harness
import servers
from test_writes import PROFILES, gen, hidden_commands, mid_of, server_mids, settle, \
    wait_applied


# -- kill -9 at every step ---------------------------------------------------------

def killed_by_hook(m, step):
    """Whether the daemon of @m ended by the kill hook at @step (a
    command on the mount may fail with ENOTCONN once it has)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        m.proc.wait(5)
    return m.proc.poll() is not None and \
        "test hook: killed at op step %d" % step in m.stderr()


def run_killed(s, tmp_path, name, step, act, finish):
    """Mount with the kill hook at step; act on the mount (the kill may
    cut a command of many files in the middle); wait for the daemon to die
    by its own hand (False if it never reached that step and finished the
    ops instead); then mount again on the same cache, let the ops finish,
    finish(mount) what the kill cut short, as a user would run the
    command again, and compare the tree with the server's."""
    cache = str(tmp_path / (name + "-cache"))
    mnt = str(tmp_path / name)
    os.environ["CONVOYFS_TEST_KILL_AT_STEP"] = str(step)
    try:
        # what is tried here is the kill, not a slow server: the tests'
        # usual 10 s command deadline, met by a Dovecot that stalls on a
        # loaded machine's disk, would cut a session in the middle
        m = harness.Mount(s, mnt, cache, binary=harness.convoyfs_binary(), timeout=30)
        m.start()
    finally:
        del os.environ["CONVOYFS_TEST_KILL_AT_STEP"]
    killed = False
    try:
        m.wait_idle(120)
        act(m)

        def over():
            if m.proc.poll() is not None:
                return True
            try:
                return m.status_field("operations pending") == "0"
            except OSError:
                return m.proc.poll() is not None
        harness.wait_until(over, 120, interval=0.05, what="the kill or the ops done")
        time.sleep(0.3)
        killed = m.proc.poll() is not None
    finally:
        m.stop()
    m2 = harness.Mount(s, mnt, cache, binary=harness.convoyfs_binary(), timeout=30)
    m2.start()
    try:
        m2.wait_idle(120)
        wait_applied(m2, 120)
        finish(m2)
        wait_applied(m2, 120)
        settle(m2)
        got = servers.mount_tree(m2.path)
        want = servers.server_tree(s)
        assert got == want, servers.tree_diff(got, want)
    finally:
        assert m2.stop() == 0, m2.stderr()[-3000:]
    if killed:
        assert "test hook: killed at op step %d" % step in m.stderr()
    return killed


# what a server's capabilities change: the steps of a move (MOVE, or
# COPY + STORE + UID EXPUNGE, or COPY + STORE) and where an append's UID
# comes from (APPENDUID, or the target's new messages); rm is a move,
# flags and folder renames run alike everywhere
KILLS = [("mv", "dovecot"), ("mv", "no-move"), ("mv", "reduced"), ("rm", "no-move"),
         ("setfattr", "dovecot"), ("rename", "dovecot"), ("cp", "dovecot"),
         ("cp", "reduced")]

# one command's worth of files: big enough that its ops run in batches
# while the command is still going, so a kill can cut it in the middle.
# CONVOYFS_KILL_BATCH sets another size
KILL_BATCH = int(os.environ.get("CONVOYFS_KILL_BATCH", "1000"))


@pytest.mark.parametrize("action,profile", KILLS, ids=["-".join(k) for k in KILLS])
def test_kill_at_every_step_loses_and_duplicates_nothing(profile, action, tmp_path):
    """kill -9 at every step of the ops of one command over 1000 messages
    (mv, rm, setfattr, cp) or of a folder rename, then a new mount on the
    same cache, where the command is run again for what the kill cut
    short: each message exists exactly once on the server, where the
    command puts it, and the mount's tree is the server's."""
    caps = PROFILES[profile]
    s = servers.DovecotServer(imap_capability=caps) if caps else servers.DovecotServer()
    n = KILL_BATCH
    try:
        s.start()
        step = 0
        while True:
            step += 1
            # a guard against a loop, not a bound on the steps: a slow
            # cp (sanitizers, a loaded machine) is cut into a batch a
            # second, each of a few steps
            assert step < 60, "no end to the steps"
            src, dst = "Src%d" % step, "Dst%d" % step
            msgs = gen(n, 100 + step)
            want = sorted(mid_of(m[0]) for m in msgs)
            s.append_many(src, msgs)
            s.create(dst)
            local = tmp_path / ("local%d" % step)
            if action == "cp":
                local.mkdir()
                for i, (data, _w, _f) in enumerate(msgs):
                    (local / ("%04d.eml" % i)).write_bytes(data)

            def shell(m, cmd, first):
                r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
                if r.returncode and first and killed_by_hook(m, step):
                    return
                assert r.returncode == 0, r.stderr[-1000:] + "\n--- convoyfs:\n" + \
                    m.stderr()[-3000:] + "\n" + s.diagnostics()

            def act(m, first=True):
                d = os.path.join(m.path, src)
                left = glob.glob(glob.escape(d) + "/*.eml")
                if action == "mv" and left:
                    shell(m, "mv %s/*.eml %s/" % (shlex.quote(d),
                                                  shlex.quote(os.path.join(m.path, dst))), first)
                elif action == "rm" and left:
                    shell(m, "rm %s/*.eml" % shlex.quote(d), first)
                elif action == "setfattr":
                    for f in left:
                        try:
                            os.setxattr(f, "user.convoyfs.flags", b"\\Flagged")
                        except OSError:
                            if first and killed_by_hook(m, step):
                                return
                            raise
                elif action == "cp":
                    # what the server has not got yet, by Message-ID
                    have = set(server_mids(s, dst))
                    todo = [str(local / ("%04d.eml" % i)) for i, (data, _w, _f) in
                            enumerate(msgs) if mid_of(data) not in have]
                    if todo:
                        shell(m, "cp %s %s/" % (" ".join(shlex.quote(x) for x in todo),
                                                shlex.quote(os.path.join(m.path, dst))), first)
                elif action == "rename" and first:
                    os.rename(d, os.path.join(m.path, "Renamed%d" % step))

            killed = run_killed(s, tmp_path, "m%d" % step, step, act,
                                lambda m: act(m, first=False))
            if action == "mv":
                assert server_mids(s, dst) == want
                assert server_mids(s, src) == []
            elif action == "rm":
                trash = server_mids(s, "Trash")
                assert sorted(set(want) & set(trash)) == want
                assert len(trash) == len(set(trash)), "duplicates in Trash"
                assert server_mids(s, src) == []
            elif action == "setfattr":
                flags = [f["flags"] for f in s.fetch_folder(src, body=False).values()]
                assert len(flags) == n and all(f == {"\\Flagged"} for f in flags), flags
            elif action == "cp":
                assert server_mids(s, dst) == want  # each once
            else:
                names = set(s.selectable())
                assert "Renamed%d" % step in names and src not in names
                assert server_mids(s, "Renamed%d" % step) == want
            if not killed:
                break
            # the next step starts from an empty account, so that each of
            # its mounts syncs one command's messages, not every step's
            names = set(s.selectable())
            for f in (src, dst, "Renamed%d" % step):
                if f in names:
                    s.delete(f)
            trash = list(s.uid_flags("Trash")) if "Trash" in names else []
            if trash:
                s.expunge_uids("Trash", trash)
        assert step > 1, "the hook never fired"
        if caps:
            assert hidden_commands(s) == []
    finally:
        s.cleanup()
