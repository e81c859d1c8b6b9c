"""Conversations/: each directory holds one connected component of the
Message-ID / References / In-Reply-To graph, computed here independently
from the server's copies of the messages."""

import email.parser
import email.policy
import os
import re

import harness

CONV = "Conversations"
XATTR = "user.convoyfs."


def header_ids(raw):
    """(message id or None, [referenced ids]) as the threader reads them:
    the first <...> of Message-ID (else the value if it is one word), and
    every <...> of References and In-Reply-To, whitespace inside removed."""
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)

    def value(name):
        v = msg.get(name)
        if v is None:
            return ""
        if not isinstance(v, str):
            v = str(v)
        return re.sub(r"\r?\n[ \t]", " ", v)

    def tokens(text):
        return [t for t in (re.sub(r"\s", "", m) for m in re.findall(r"<([^<>]*)>", text)) if t]

    mid = tokens(value("Message-ID"))
    if mid:
        own = "<%s>" % mid[0]
    else:
        v = value("Message-ID").strip()
        own = v if v and not re.search(r"\s", v) else None
    refs = ["<%s>" % t for t in tokens(value("References")) + tokens(value("In-Reply-To"))]
    return own, refs


def expected_partition(server_state):
    """frozensets of (raw folder, uid): the connected components."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    nodes = {}
    for name, msgs in server_state.messages.items():
        raw = server_state.raw[name]
        for uid, info in msgs.items():
            key = (raw, uid)
            own, refs = header_ids(info["body"])
            node = ("id", own) if own else ("msg", key)
            nodes[key] = node
            find(node)
            for r in refs[:100]:
                union(node, ("id", r))
    groups = {}
    for key, node in nodes.items():
        groups.setdefault(find(node), set()).add(key)
    return {frozenset(g) for g in groups.values()}


def mount_partition(root):
    """frozensets of (raw folder, uid) per Conversations/ directory, and
    the directory names."""
    out = set()
    names = sorted(os.listdir(os.path.join(root, CONV)))
    for d in names:
        path = os.path.join(root, CONV, d)
        members = set()
        for f in os.listdir(path):
            p = os.path.join(path, f)
            members.add((os.getxattr(p, XATTR + "folder").decode(),
                         int(os.getxattr(p, XATTR + "uid"))))
        assert members, "empty conversation directory %s" % d
        out.add(frozenset(members))
    return out, names


def test_conversations_are_the_reference_graph_components(shared_mount, server_state, corpus):
    got, names = mount_partition(shared_mount.path)
    want = expected_partition(server_state)
    # the corpora hold real threads: a partition of singletons proves nothing
    assert sum(1 for g in want if len(g) >= 3) >= 20
    assert len(got) == len(want), (len(got), len(want))
    assert got == want
    assert len(names) == len(set(names))
    # every message appears in exactly one conversation
    assert sum(len(g) for g in got) == server_state.total()


def test_conversation_files_are_the_folder_files(shared_mount, server_state):
    root = shared_mount.path
    checked = 0
    for d in sorted(os.listdir(os.path.join(root, CONV)))[:60]:
        for f in os.listdir(os.path.join(root, CONV, d)):
            p = os.path.join(root, CONV, d, f)
            st = os.stat(p)
            folder = os.getxattr(p, XATTR + "folder").decode()
            display = next(n for n, r in server_state.raw.items() if r == folder)
            q = os.path.join(root, server_state.dir_of(display), f)
            sq = os.stat(q)
            # one inode wherever it shows; st_nlink counts the places
            assert (st.st_ino, st.st_size, st.st_mtime) == (sq.st_ino, sq.st_size, sq.st_mtime)
            assert st.st_nlink == 2
            assert os.getxattr(q, XATTR + "conversation").decode() == d
            checked += 1
    assert checked > 0


def test_writes_into_conversations_are_refused(shared_mount):
    import errno
    root = os.path.join(shared_mount.path, CONV)
    for fn in (lambda: os.mkdir(os.path.join(root, "new")),
               lambda: open(os.path.join(root, "x.eml"), "w")):
        try:
            fn()
            raise AssertionError("write into Conversations/ succeeded")
        except OSError as e:
            assert e.errno in (errno.EROFS, errno.EPERM, errno.EXDEV), e


def thread_mailbox(n=60):
    """Generated messages: threads of replies (References, some only
    In-Reply-To), to be spread over two folders."""
    return list(harness.genmail.gen_messages(n, 4242))


def partition_of(m):
    got, names = mount_partition(m.path)
    return got, names


def test_same_conversations_whatever_the_arrival_order(dovecot_factory, mount, tmp_path):
    items = thread_mailbox()
    first, second = items[1::2], items[0::2]

    # server A: everything at once
    a = dovecot_factory()
    with a.session() as c:
        harness.genmail.create_folder(c, "Other")
    a.append_many("INBOX", [(m, w, ()) for m, w in first])
    a.append_many("Other", [(m, w, ()) for m, w in second])
    ma = mount(a, name="a")
    want = expected_partition(harness_state(a))
    got_a, names_a = partition_of(ma)
    assert any(len(g) >= 3 for g in want)
    assert got_a == want

    # server B: the replies and parents arrive in the other order, in two
    # rounds, with a sync in between
    b = dovecot_factory()
    with b.session() as c:
        harness.genmail.create_folder(c, "Other")
    b.append_many("Other", [(m, w, ()) for m, w in second[::-1]])
    mb = mount(b, name="b")
    b.append_many("INBOX", [(m, w, ()) for m, w in first[::-1]])
    _sync_now(mb)
    got_b, names_b = partition_of(mb)
    want_b = expected_partition(harness_state(b))
    assert got_b == want_b
    # the same conversations by Message-ID sets, with the same subjects
    assert _by_message_ids(ma) == _by_message_ids(mb)

    # after a remount from the store: the same directories, same names
    mb.stop()
    mb2 = mount(b, name="b2", cache_dir=mb.cache_dir)
    got_b2, names_b2 = partition_of(mb2)
    assert (got_b2, names_b2) == (got_b, names_b)


def harness_state(d):
    import conftest
    return conftest.ServerState(d)


def _sync_now(m):
    with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
        f.write("sync\n")
    m.wait_idle(120)


def _by_message_ids(m):
    """{(subject part of the dir name, frozenset of Message-IDs)}"""
    out = set()
    root = os.path.join(m.path, CONV)
    for d in os.listdir(root):
        ids = frozenset(os.getxattr(os.path.join(root, d, f), XATTR + "message-id").decode()
                        for f in os.listdir(os.path.join(root, d)))
        title = re.sub(r" #\d+$", "", d)
        out.add((title, ids))
    return out
