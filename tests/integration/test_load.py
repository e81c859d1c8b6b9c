"""Load (issue 10): a first sync of a 20,000-message INBOX on an empty cache
while eight processes work on the mount at once and another client expunges
and appends.

The server is a private Dovecot (rawlog off) whose INBOX is written straight
into its maildir the way tools/bench does (bench.load_maildir), plus two
small folders made with APPEND. convoyfs mounts it with an empty cache and,
as soon as INBOX lists its first files and while the first sync still runs
(asserted: `state: syncing`), these start together:

  find       find MNT -name '*.eml' (twice over the whole mount, Conversations
             included)
  grep       LC_ALL=C.UTF-8 grep -rlF WORD over SAMPLE_GREP INBOX files and the
             small folders
  reader A   a python process: open, read, fgetxattr user.convoyfs.uid of
             SAMPLE_READ INBOX files, newest first; each body kept apart
  reader B   the same files, oldest first (so both meet on the same bodies)
  cat        cat of SAMPLE_CAT of those files in one command
  stat       stat -c of every INBOX file listed at the start
  getfattr   getfattr -d of the same files
  ls -l      ls -l MNT/INBOX three times

meanwhile an imaplib client expunges (UID STORE \\Deleted, UID EXPUNGE) some
of the files being read and some older mail the mount may not know yet, in
batches, and appends to INBOX and Archive.

Legitimate errors, and only these: ENOENT ("No such file or directory")
  - for an INBOX file whose UID the other client expunged (or, for names not
    in the sample, a file absent from the final tree: at most as many names as
    were expunged): the message is gone, open() says so;
  - for a path under Conversations/ whose directory (or file) is not in the
    final tree: conversations merge as older mail is learned, and one named
    after its earliest message is renamed when an earlier message arrives.
Anything else (EIO, a timeout, a non-zero exit without such a line, a short
or wrong read) fails the test.

Then: every process ended within WORK_BOUND seconds (no deadlock) and
`cat MNT/.convoyfs/status` answers within 5 s; every body read (readers A,
B and cat) is byte for byte BODY.PEEK[] of its UID, taken from the server
before any expunge; grep listed exactly the files whose body holds the word;
stat's sizes are the server's RFC822.SIZE and getfattr's UIDs are the
files'; and once the first sync is done (`state: idle`), the mount's tree
equals the server's (servers.converge without asking for a sync).
"""

import errno
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import harness
import servers

bench = harness.load_tool("bench")

MESSAGES = 20000
SEED = 10
WORD = "obsidian"
SAMPLE_READ = 1000      # files readers A and B read (the same ones)
SAMPLE_CAT = 500        # of those, what `cat` reads
SAMPLE_GREP = 600       # INBOX files grep reads
EXPUNGE_SAMPLE = 40     # expunged among the files being read
EXPUNGE_OTHER = 40      # expunged among older mail
APPEND_INBOX = 5
APPEND_ARCHIVE = 3
WORK_BOUND = 150        # seconds for all eight processes together
IDLE_BOUND = 240        # seconds from the mount until the first sync is done
NOENT = "No such file or directory"

READER = r"""
import errno, json, os, sys
out, listing = sys.argv[1], sys.argv[2]
paths = open(listing, encoding="utf-8").read().split("\0")
log = open(os.path.join(out, "log.jsonl"), "w")
for i, p in enumerate(paths):
    if not p:
        continue
    rec = {"i": i, "path": p}
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as e:
        rec.update(step="open", errno=e.errno)
    else:
        try:
            chunks = []
            while True:
                b = os.read(fd, 65536)
                if not b:
                    break
                chunks.append(b)
            data = b"".join(chunks)
            with open(os.path.join(out, "%d.eml" % i), "wb") as f:
                f.write(data)
            rec["step"] = "xattr"
            rec["uid"] = int(os.getxattr(fd, "user.convoyfs.uid").decode())
            rec["errno"] = 0
        except OSError as e:
            rec.setdefault("step", "read")
            rec["errno"] = e.errno
        finally:
            os.close(fd)
    log.write(json.dumps(rec) + "\n")
log.close()
"""


def listing(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".eml"))


def error_lines(text):
    return [l for l in text.splitlines() if l.strip()]


def eml_id(text):
    """The #id of a message file name (its inode), or None. Error lines are
    read by these ids, as tools quote names in their own ways."""
    m = re.search(r" #(\d+)\.eml", text)
    return int(m.group(1)) if m else None


def line_target(line):
    """What an error line is about: ("INBOX", id), ("conv", dir id, file id or
    None), or None."""
    m = re.search(r"/INBOX/[^/]* #(\d+)\.eml", line)
    if m:
        return ("INBOX", int(m.group(1)))
    m = re.search(r"/%s/[^/]* #(\d+)(?:/[^/]* #(\d+)\.eml)?" % harness.CONVERSATIONS, line)
    if m:
        return ("conv", int(m.group(1)), int(m.group(2)) if m.group(2) else None)
    return None


class Mutator(threading.Thread):
    """The other client: expunges in batches, then appends."""

    def __init__(self, dv, batches, appends):
        super().__init__(daemon=True)
        self.dv, self.batches, self.appends = dv, batches, appends
        self.done_uids = set()
        self.appended = []
        self.error = None

    def run(self):
        try:
            for uids in self.batches:
                time.sleep(0.7)
                self.dv.expunge_uids("INBOX", uids)
                self.done_uids |= set(uids)
            for folder, items in self.appends:
                self.appended += self.dv.append_many(folder, items, create=False)
        except BaseException as e:  # reported by the test
            self.error = e


@pytest.fixture
def big_dovecot():
    """A private Dovecot without rawlog (it would write every byte of every
    session); set up before the mount, so it is stopped after the unmount."""
    dv = servers.DovecotServer(extra_conf="protocol imap {\n  rawlog_dir =\n}\n")
    try:
        dv.start()
        yield dv
    finally:
        dv.cleanup()


def test_first_sync_of_20k_under_concurrent_load(tmp_path, big_dovecot, mount):
    t_start = time.monotonic()
    dv = big_dovecot
    procs = []
    try:
        load_secs, _, loaded = bench.load_maildir(dv, MESSAGES, SEED)
        assert loaded == MESSAGES
        small = list(harness.genmail.gen_messages(80, SEED + 1))
        dv.append_many("Archive", [(m, w, ()) for m, w in small[:50]])
        dv.append_many("Lists/dev", [(m, w, ()) for m, w in small[50:]])
        # Dovecot indexes the maildir here; sizes of every message for stat
        meta = dv.fetch_folder("INBOX", body=False)
        assert len(meta) == MESSAGES
        t_loaded = time.monotonic()

        m = mount(dv, wait_idle=False, timeout=30)
        m.arm(IDLE_BOUND + WORK_BOUND + 120)
        t_mounted = time.monotonic()
        inbox = os.path.join(m.path, "INBOX")
        harness.wait_until(lambda: os.path.isdir(inbox) and len(listing(inbox)) >= 1000,
                           60, interval=0.1, what="INBOX to list its first 1000 files")
        names = listing(inbox)
        assert re.search(r"(?m)^state:\s*syncing\s*$", m.status()), m.status()
        n_at_start = len(names)

        newest = names[::-1]
        read_names = newest[:SAMPLE_READ]
        uid_of = {n: int(os.getxattr(os.path.join(inbox, n), "user.convoyfs.uid"))
                  for n in newest[:max(SAMPLE_READ, SAMPLE_GREP)]}
        uid_of_id = {eml_id(n): u for n, u in uid_of.items()}
        cat_names = read_names[1::2][:SAMPLE_CAT]
        grep_names = newest[:SAMPLE_GREP]
        want_body = dv.bodies("INBOX", sorted(uid_of.values()))
        assert set(want_body) == set(uid_of.values())

        # what the other client does: expunge files being read (also ones cat
        # and grep read) and older mail, in four batches; append afterwards
        sample_uids = [uid_of[n] for n in read_names]
        exp_sample = sample_uids[5::SAMPLE_READ // EXPUNGE_SAMPLE][:EXPUNGE_SAMPLE]
        known = set(uid_of.values())
        older = [u for u in sorted(meta) if u not in known]
        exp_other = older[::len(older) // EXPUNGE_OTHER][:EXPUNGE_OTHER]
        batches = [exp_sample[i::4] + exp_other[i::4] for i in range(4)]
        extra = list(harness.genmail.gen_messages(APPEND_INBOX + APPEND_ARCHIVE, SEED + 2))
        appends = [("INBOX", [(d, w, ()) for d, w in extra[:APPEND_INBOX]]),
                   ("Archive", [(d, w, ()) for d, w in extra[APPEND_INBOX:]])]
        expunged = set(exp_sample) | set(exp_other)

        work = tmp_path / "work"
        work.mkdir()
        for r in ("a", "b"):
            (work / r).mkdir()
        (work / "a.list").write_text("\0".join(os.path.join(inbox, n) for n in read_names))
        (work / "b.list").write_text("\0".join(os.path.join(inbox, n)
                                                for n in read_names[::-1]))
        stat_paths = [os.path.join(inbox, n) for n in names]
        env = dict(os.environ, LC_ALL="C.UTF-8")
        jobs = {
            "find": ["sh", "-c", 'find "$1" -name "*.eml"; find "$1" -name "*.eml"',
                     "sh", m.path],
            "grep": ["grep", "-rlF", WORD, "--"]
            + [os.path.join(inbox, n) for n in grep_names]
            + [os.path.join(m.path, "Archive"), os.path.join(m.path, "Lists")],
            "reader A": [sys.executable, "-c", READER, str(work / "a"), str(work / "a.list")],
            "reader B": [sys.executable, "-c", READER, str(work / "b"), str(work / "b.list")],
            "cat": ["cat", "--"] + [os.path.join(inbox, n) for n in cat_names],
            "stat": ["stat", "-c", "%n|%s|%i", "--"] + stat_paths,
            "getfattr": ["getfattr", "--absolute-names", "-d", "--"] + stat_paths,
            "ls -l": ["sh", "-c", 'ls -l "$1"; ls -l "$1"; ls -l "$1"', "sh", inbox],
        }
        outs = {}
        for name, argv in jobs.items():
            fo = open(work / (name.replace(" ", "_") + ".out"), "wb")
            fe = open(work / (name.replace(" ", "_") + ".err"), "wb")
            procs.append((name, subprocess.Popen(argv, stdout=fo, stderr=fe, env=env,
                                                 stdin=subprocess.DEVNULL), fo, fe))
        t_work = time.monotonic()
        mut = Mutator(dv, batches, appends)
        mut.start()

        # no deadlock: everything ends within the bound
        hung = []
        for name, p, fo, fe in procs:
            try:
                p.wait(max(1, WORK_BOUND - (time.monotonic() - t_work)))
            except subprocess.TimeoutExpired:
                hung.append(name)
        work_secs = time.monotonic() - t_work
        mut.join(60)
        assert not hung, "still running after %d s: %s" % (WORK_BOUND, hung)
        r = subprocess.run(["cat", os.path.join(m.path, ".convoyfs", "status")],
                           capture_output=True, timeout=5)
        assert r.returncode == 0 and b"state:" in r.stdout, r
        still_syncing = b"state: syncing" in r.stdout
        assert not mut.is_alive(), "the other client did not finish"
        assert mut.error is None, "the other client failed: %r" % (mut.error,)
        assert mut.done_uids == expunged and len(mut.appended) == len(extra)
        for name, p, fo, fe in procs:
            fo.close()
            fe.close()
            outs[name] = (p.returncode,
                          (work / (name.replace(" ", "_") + ".out")).read_bytes(),
                          (work / (name.replace(" ", "_") + ".err")).read_text(errors="replace"))

        # the first sync finishes, and the tree is the server's
        m.wait_idle(max(10, IDLE_BOUND - (time.monotonic() - t_mounted)))
        t_idle = time.monotonic()
        servers.converge(m, dv, timeout=30, trigger=False,
                         what="the mount to equal the server after the first sync")
        final_inbox = set(listing(inbox))
        final_ids = {eml_id(n) for n in final_inbox}
        conv_root = os.path.join(m.path, harness.CONVERSATIONS)
        final_conv, conv_name = {}, {}
        for d in os.listdir(conv_root):
            cid = int(d.rsplit("#", 1)[1])
            conv_name[cid] = d
            final_conv[cid] = {eml_id(f) for f in os.listdir(os.path.join(conv_root, d))}

        # -- which errors were legitimate --------------------------------------
        problems = []
        vanished_unsampled = set()

        def legit_noent(line):
            if NOENT not in line:
                return False
            t = line_target(line)
            if t is None:
                return False
            if t[0] == "INBOX":
                if t[1] in uid_of_id:
                    return uid_of_id[t[1]] in expunged
                if t[1] not in final_ids:
                    vanished_unsampled.add(t[1])
                    return True
                return False
            # a conversation merged into another, or renamed (an earlier
            # message came), or a message that left it (expunged)
            return (t[1] not in final_conv
                    or "/%s/%s" % (harness.CONVERSATIONS, conv_name[t[1]]) not in line
                    or (t[2] is not None and t[2] not in final_conv[t[1]]))

        for name, (rc, _out, err) in outs.items():
            bad = []
            for line in error_lines(err):
                if not legit_noent(line):
                    bad.append(line)
            if bad:
                problems.append("%s: %s" % (name, "; ".join(bad[:8])))
            elif rc not in (0,) and not (name == "grep" and rc == 1) and not error_lines(err):
                problems.append("%s exited with %d and said nothing" % (name, rc))
        if len(vanished_unsampled) > len(expunged):
            problems.append("%d files vanished, %d were expunged: %s" % (
                len(vanished_unsampled), len(expunged), sorted(vanished_unsampled)[:5]))

        # -- every byte read is the server's --------------------------------------
        reads = 0
        for r in ("a", "b"):
            recs = [json.loads(l) for l in (work / r / "log.jsonl").read_text().splitlines()]
            assert len(recs) == len(read_names), "reader %s stopped early" % r
            for rec in recs:
                n = os.path.basename(rec["path"])
                if rec["errno"] == errno.ENOENT and rec["step"] == "xattr":
                    # read whole, then expunged before fgetxattr: still check the bytes
                    rec["uid"] = uid_of[n]
                    if uid_of[n] not in expunged:
                        problems.append("reader %s: ENOENT from fgetxattr of %s (UID %d), "
                                        "not expunged" % (r, n, uid_of[n]))
                elif rec["errno"]:
                    if not (rec["errno"] == errno.ENOENT and rec.get("step") == "open"
                            and uid_of[n] in expunged):
                        problems.append("reader %s: %s at %s of %s (UID %d%s)" % (
                            r, errno.errorcode.get(rec["errno"], rec["errno"]), rec["step"], n,
                            uid_of[n], ", expunged" if uid_of[n] in expunged else ""))
                    continue
                if rec["uid"] != uid_of[n]:
                    problems.append("reader %s: %s has UID %d, listed with %d" % (
                        r, n, rec["uid"], uid_of[n]))
                    continue
                got = (work / r / ("%d.eml" % rec["i"])).read_bytes()
                if got != want_body[rec["uid"]]:
                    problems.append("reader %s: %s (UID %d): %d bytes read, the server has "
                                    "%d, first difference at %d" % (
                                        r, n, rec["uid"], len(got), len(want_body[rec["uid"]]),
                                        next((i for i, (x, y) in enumerate(
                                            zip(got, want_body[rec["uid"]])) if x != y),
                                            min(len(got), len(want_body[rec["uid"]])))))
                reads += 1

        # cat: the bodies of the files it opened, in order
        failed_cat = {eml_id(l) for l in error_lines(outs["cat"][2])}
        got_cat, pos, cat_reads = outs["cat"][1], 0, 0
        for n in cat_names:
            if eml_id(n) in failed_cat:
                continue
            want = want_body[uid_of[n]]
            if got_cat[pos:pos + len(want)] != want:
                problems.append("cat: the bytes of %s (UID %d, %d bytes) at offset %d of its "
                                "output are not the server's" % (n, uid_of[n], len(want), pos))
                break
            pos += len(want)
            cat_reads += 1
        else:
            if pos != len(got_cat):
                problems.append("cat gave %d bytes, the bodies of the files it opened are %d"
                                % (len(got_cat), pos))

        # grep: exactly the files whose body holds the word
        listed = set(outs["grep"][1].decode().splitlines())
        failed_grep = {eml_id(l) for l in error_lines(outs["grep"][2])}
        for n in grep_names:
            p = os.path.join(inbox, n)
            if eml_id(n) in failed_grep:
                continue
            has = WORD.encode() in want_body[uid_of[n]]
            if has != (p in listed):
                problems.append("grep %s %s (UID %d)" % (
                    "missed" if has else "wrongly listed", n, uid_of[n]))

        # stat: RFC822.SIZE (= the body's length on Dovecot); getfattr: the UIDs
        size_of_name = {}
        for line in outs["stat"][1].decode().splitlines():
            p, size, _ino = line.rsplit("|", 2)
            size_of_name[os.path.basename(p)] = int(size)
        uid_by_xattr = {}
        cur = None
        for line in outs["getfattr"][1].decode().splitlines():
            if line.startswith("# file: "):
                cur = os.path.basename(line[len("# file: "):])
            elif line.startswith("user.convoyfs.uid="):
                uid_by_xattr[cur] = int(line.split("=", 1)[1].strip('"'))
        for n in names:
            if n in uid_by_xattr:
                u = uid_by_xattr[n]
                if n in uid_of and uid_of[n] != u:
                    problems.append("getfattr: %s has UID %d, %d before" % (n, u, uid_of[n]))
                if n in size_of_name and size_of_name[n] != meta[u]["size"]:
                    problems.append("stat: %s (UID %d) is %d bytes, the server says %d" % (
                        n, u, size_of_name[n], meta[u]["size"]))
            elif n in final_inbox:
                problems.append("getfattr did not show %s" % n)
        assert len(uid_by_xattr) >= len(names) - len(expunged)

        total = time.monotonic() - t_start
        print("error lines: %s" % ", ".join("%s %d" % (k, len(error_lines(v[2])))
                                             for k, v in outs.items()))
        print("load: %d messages written in %.1f s, indexed by %.1f s; mount to idle %.1f s; "
              "%d files listed when the work began; 8 processes took %.1f s (sync %s then); "
              "%d reads + %d by cat checked byte for byte; %d expunged, %d appended; "
              "test %.1f s" % (MESSAGES, load_secs, t_loaded - t_start, t_idle - t_mounted,
                               n_at_start, work_secs,
                               "still running" if still_syncing else "done",
                               reads, cat_reads, len(expunged), len(extra), total))
        assert not problems, "\n".join(problems[:40])
        assert reads >= 2 * (SAMPLE_READ - EXPUNGE_SAMPLE)
    finally:
        for _name, p, fo, fe in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
            fo.close()
            fe.close()
