"""Changes made by another client reach the mount at the next sync: new
mail, flag changes and expunged mail (DESIGN §4 refresh)."""

import os

import harness

XATTR = "user.convoyfs."


def by_uid(m):
    inbox = os.path.join(m.path, "INBOX")
    out = {}
    for f in os.listdir(inbox):
        p = os.path.join(inbox, f)
        out[int(os.getxattr(p, XATTR + "uid"))] = p
    return out


def sync_now(m):
    with open(os.path.join(m.path, ".convoyfs", "ctl"), "w") as f:
        f.write("sync\n")
    m.wait_idle(120)


def test_new_flags_and_expunges_from_another_client(fresh_dovecot, mount):
    d = fresh_dovecot
    items = list(harness.genmail.gen_messages(12, 31))
    d.append_many("INBOX", [(msg, w, ()) for msg, w in items[:10]])
    m = mount(d)
    before = by_uid(m)
    assert len(before) == 10
    uids = sorted(before)
    inodes = {u: os.stat(p).st_ino for u, p in before.items()}

    with d.session() as c:
        c.select("INBOX")
        c.uid("STORE", str(uids[0]), "+FLAGS", r"(\Flagged $Work)")
        c.uid("STORE", "%d,%d" % (uids[2], uids[3]), "+FLAGS", r"(\Deleted)")
        c.expunge()
        # flagged and unflagged again: back to what it was
        c.uid("STORE", str(uids[1]), "+FLAGS", r"(\Deleted)")
        c.uid("STORE", str(uids[1]), "-FLAGS", r"(\Deleted)")
        c.close()
    d.append_many("INBOX", [(msg, w, ()) for msg, w in items[10:]])

    sync_now(m)
    after = by_uid(m)
    server = d.fetch_folder("INBOX", body=False)
    assert set(after) == set(server)
    assert uids[2] not in after and uids[3] not in after
    assert len(after) == 10
    for uid, p in after.items():
        flags = set(os.getxattr(p, XATTR + "flags").decode().split())
        assert flags == server[uid]["flags"], (uid, flags, server[uid]["flags"])
    assert {"\\Flagged", "$Work"} <= set(os.getxattr(after[uids[0]], XATTR + "flags").decode().split())
    # known messages keep their inode (and so their name)
    for u in uids[4:]:
        assert os.stat(after[u]).st_ino == inodes[u]
    # the expunged files are gone for lookups too
    assert not os.path.exists(before[uids[2]])


def test_message_flagged_deleted_is_hidden(fresh_dovecot, mount):
    d = fresh_dovecot
    items = list(harness.genmail.gen_messages(3, 32))
    d.append_many("INBOX", [(msg, w, ()) for msg, w in items])
    m = mount(d)
    before = by_uid(m)
    uid = sorted(before)[0]
    with d.session() as c:
        c.select("INBOX")
        c.uid("STORE", str(uid), "+FLAGS", r"(\Deleted)")
        c.close()
    sync_now(m)
    after = by_uid(m)
    assert uid not in after and len(after) == 2
    assert not os.path.exists(before[uid])
