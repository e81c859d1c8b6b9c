"""Reading through the mount gives the server's exact bytes, never marks mail
read, and browsing never pulls a body."""

import collections
import hashlib
import os
import subprocess
import time

import pytest

import harness


def digest(data):
    return hashlib.sha256(data).hexdigest()


def message_paths(mount, state):
    """[(folder display name, path)] of every message file of the mount."""
    tree = harness.walk_folders(mount.path, state.expected_dirs())
    by_dir = {state.dir_of(f): f for f in state.messages}
    out = []
    for rel, names in tree.items():
        for n in names:
            out.append((by_dir.get(rel), os.path.join(mount.path, rel, n)))
    return out


def compare_folder_contents(state, contents):
    """contents: {folder: [bytes]}. Problems where a folder's files are not
    exactly the server's bodies (as multisets)."""
    problems = []
    for folder, msgs in state.messages.items():
        want = collections.Counter(digest(m["body"]) for m in msgs.values())
        got = collections.Counter(digest(b) for b in contents.get(folder, []))
        if want != got:
            sizes = {digest(m["body"]): (uid, m["size"]) for uid, m in msgs.items()}
            missing = [sizes[d] for d in (want - got)]
            extra = len(list((got - want).elements()))
            problems.append("%s: %d server messages without an equal file (uid, size): %s; "
                            "%d files equal to no server message" % (
                                folder, len(missing), missing[:8], extra))
    stray = set(contents) - set(state.messages)
    if stray:
        problems.append("files outside any selectable folder: %s" % sorted(map(str, stray)))
    return problems


def test_every_message_reads_exactly_the_server_bytes(dovecot, server_state, mount):
    m = mount(dovecot)
    paths = message_paths(m, server_state)
    assert len(paths) == server_state.total() >= 500
    # stat everything first: st_size must be right before any body is read
    sizes = {p: os.stat(p).st_size for _, p in paths}
    problems = []
    for folder, msgs in server_state.messages.items():
        want = sorted(x["size"] for x in msgs.values())
        got = sorted(sizes[p] for f, p in paths if f == folder)
        if want != got:
            problems.append("%s: st_size before reading differs from RFC822.SIZE" % folder)
    contents = collections.defaultdict(list)
    for folder, p in paths:
        with open(p, "rb") as f:
            data = f.read()
        if len(data) != sizes[p]:
            problems.append("%s: st_size was %d, read gave %d bytes" % (p, sizes[p], len(data)))
        contents[folder].append(data)
    problems += compare_folder_contents(server_state, contents)
    assert not problems, "\n".join(problems[:40])


def test_corpus_messages_read_exactly(shared_mount, server_state, corpus):
    contents = collections.defaultdict(list)
    for folder, p in message_paths(shared_mount, server_state):
        if folder and folder.startswith("Corpus/"):
            with open(p, "rb") as f:
                contents[folder].append(f.read())
    corpus_state = type(server_state).__new__(type(server_state))
    corpus_state.messages = {f: v for f, v in server_state.messages.items()
                             if f.startswith("Corpus/")}
    assert sum(len(v) for v in contents.values()) == sum(
        len(v) for v in corpus_state.messages.values()) >= corpus
    problems = compare_folder_contents(corpus_state, contents)
    assert not problems, "\n".join(problems)


def test_partial_reads_at_any_offset(shared_mount, server_state):
    # the largest message (large_message.eml when the corpora are there)
    folder, uid, info = max(((f, u, i) for f, msgs in server_state.messages.items()
                             for u, i in msgs.items()), key=lambda x: x[2]["size"])
    body = info["body"]
    match = [p for f, p in message_paths(shared_mount, server_state)
             if f == folder and os.stat(p).st_size == len(body)]
    assert match, "no file of size %d in %s" % (len(body), folder)
    size = len(body)
    with open(match[0], "rb") as f:
        fd = f.fileno()
        for off, n in [(size - 1, 10), (0, 1), (1, 4095), (4095, 2), (4096, 4096), (65535, 70001),
                       (size // 2, 123457), (size - 10, 10), (size, 10), (size + 100, 10)]:
            assert os.pread(fd, n, off) == body[off:off + n], (off, n)
        f.seek(0)
        chunks = []
        while True:
            c = f.read(1000)  # odd sizes, as a naive reader would use
            if not c:
                break
            chunks.append(c)
    assert b"".join(chunks) == body


GREP_WORDS = ["quartz", "walnut", "zephyr", "Привет", "Timo", harness.genmail.ABSENT_WORDS[0]]


@pytest.mark.parametrize("word", GREP_WORDS)
def test_grep_finds_exactly_the_messages_with_the_word(shared_mount, server_state, word):
    needle = word.encode()
    want = {f: collections.Counter(digest(m["body"]) for m in msgs.values() if needle in m["body"])
            for f, msgs in server_state.messages.items()}
    n_want = sum(sum(c.values()) for c in want.values())
    if word in harness.genmail.WORDS:
        assert 0 < n_want < server_state.total(), "word %r is no discriminating test" % word
    r = subprocess.run(["grep", "-rlFZ", "--", word, shared_mount.path],
                       capture_output=True, timeout=300)
    hits = [h for h in r.stdout.split(b"\0") if h]
    by_dir = {server_state.dir_of(f): f for f in server_state.messages}
    got = collections.defaultdict(collections.Counter)
    root = os.fsencode(shared_mount.path)
    for h in hits:
        rel = os.path.relpath(h, root).decode()
        top = rel.split("/", 1)[0]
        if top == harness.CONVERSATIONS and harness.CONVERSATIONS not in server_state.expected_dirs():
            continue  # the same inodes again, by conversation
        assert top != harness.CONTROL_DIR, "grep matched a control file: %s" % rel
        folder = by_dir.get(os.path.dirname(rel))
        assert folder is not None and rel.endswith(".eml"), "unexpected hit %s" % rel
        with open(h, "rb") as f:
            got[folder][digest(f.read())] += 1
    for f in set(want) | set(got):
        assert got.get(f, collections.Counter()) == want.get(f, collections.Counter()), (
            "%s: grep found %d files, %d messages there contain %r" % (
                f, sum(got.get(f, {}).values()), sum(want.get(f, {}).values()), word))
    assert r.returncode in ((0 if n_want else 1), 2)  # 2: see the test below


def test_grep_over_the_whole_mount_meets_no_error(shared_mount):
    # every file in the mount can be read, control files included: a file
    # that cannot be opened makes `grep -r` print an error and exit 2
    for word, rc in (("walnut", 0), (harness.genmail.ABSENT_WORDS[1], 1)):
        r = subprocess.run(["grep", "-rlF", "--", word, shared_mount.path],
                           capture_output=True, timeout=300)
        assert r.stderr == b"", r.stderr.decode(errors="replace")
        assert r.returncode == rc


def test_reading_does_not_set_seen(dovecot, server_state, mount):
    folder = "Archive"
    before = dovecot.flags_of(folder)
    unseen = [u for u, f in before.items() if "\\Seen" not in f]
    assert len(unseen) >= 10, "the sample mailbox should have unread mail in %s" % folder
    mark = dovecot.rawlog_mark()
    m = mount(dovecot)  # a fresh cache: every read below goes to the server
    d = os.path.join(m.path, server_state.dir_of(folder))
    names = os.listdir(d)
    assert len(names) == len(before)
    for n in names:
        with open(os.path.join(d, n), "rb") as f:
            assert f.read()
    m.wait_idle()
    after = dovecot.flags_of(folder)
    assert after == before, "flags changed: %s" % {
        u: (before.get(u), after.get(u)) for u in set(before) | set(after)
        if before.get(u) != after.get(u)}
    text = dovecot.rawlog_text(mark)
    assert harness.commands(text, harness.BODY_FETCH), "no body was fetched at all"
    assert harness.commands(text, harness.SEEN_FETCH) == []
    stores = [c for c in text.splitlines() if " STORE " in c.upper() and "SEEN" in c.upper()]
    assert stores == []
    # and the mount still shows the server's \Seen flags
    seen_in_mount = sum("\\Seen" in os.getxattr(os.path.join(d, n), "user.convoyfs.flags")
                        .decode().split() for n in names)
    assert seen_in_mount == len(before) - len(unseen)


def test_listing_and_stat_fetch_no_body(dovecot, server_state, mount):
    m = mount(dovecot)  # fresh cache: no body is cached
    fetched = m.bodies_fetched()
    mark = dovecot.rawlog_mark()
    r = subprocess.run(["ls", "-lR", m.path], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.count(b".eml") >= server_state.total()
    r = subprocess.run(["find", m.path, "-printf", "%y %s %P\\0"], capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    total = 0
    count = 0
    for rec in r.stdout.split(b"\0"):
        if not rec:
            continue
        kind, size, rel = rec.split(b" ", 2)
        top = rel.split(b"/", 1)[0].decode(errors="replace")
        if kind == b"f" and rel.endswith(b".eml") and top not in (harness.CONTROL_DIR,
                                                                    harness.CONVERSATIONS):
            total += int(size)
            count += 1
    assert count == server_state.total()
    assert total == sum(x["size"] for msgs in server_state.messages.values()
                        for x in msgs.values())
    r = subprocess.run(["du", "-s", "--apparent-size", m.path], capture_output=True, timeout=300)
    assert r.returncode == 0
    time.sleep(0.5)
    text = dovecot.rawlog_text(mark)
    assert harness.commands(text, harness.BODY_FETCH) == [], "body fetched while listing"
    assert m.bodies_fetched() == fetched
