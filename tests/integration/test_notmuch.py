"""notmuch indexes the mount: with Conversations and .convoyfs in
new.ignore and its database outside the mount (database.path apart from
database.mail_root), `notmuch new` succeeds, counts every message on the
server once, and finds them by subject, 600-byte and non-ASCII ones too:
no name is too long for it (a name is a Xapian term, at most 245 bytes)."""

import base64
import datetime as dt
import os
import shutil
import subprocess

import pytest

import harness

pytestmark = pytest.mark.skipif(
    shutil.which("notmuch") is None,
    reason="notmuch is not installed (tools/install-deps installs it)")

WHEN = dt.datetime(2025, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)


def b64word(text):
    return b"=?UTF-8?B?" + base64.b64encode(text.encode()) + b"?="


def message(i, subject, refs=None):
    head = b"From: Sender %d <s%d@notmuch.test>\r\n" % (i, i)
    head += b"To: r@notmuch.test\r\n"
    head += (WHEN + dt.timedelta(minutes=i)).strftime(
        "Date: %a, %d %b %Y %H:%M:%S +0000\r\n").encode()
    head += b"Message-ID: <m%d@notmuch.test>\r\n" % i
    if refs is not None:
        head += b"In-Reply-To: <m%d@notmuch.test>\r\n" % refs
    head += b"Subject: " + subject + b"\r\n"
    return head + b"\r\nbody of message %d\r\n" % i


# (folder, Subject header value, replied-to index or None)
LONG_ASCII = b"Zanzibarquux " + b"abcdefghij " * 55  # 618 bytes
LONG_UTF8 = b"\r\n ".join(b64word(w) for w in ["Grüße " * 10, "日本語 " * 10, "😀 " * 10] * 3)
LONG_EMOJI = b64word("Fußgängerübergänge " + "😀" * 146)


def messages():
    out = []
    for i in range(24):
        folder = ("INBOX", "Archive", "Café/Ünïcödé")[i % 3]
        out.append((folder, b"plain message %d" % i, i - 1 if i % 4 == 3 else None))
    out += [("INBOX", LONG_ASCII, None), ("Archive", LONG_UTF8, None),
            ("Café/Ünïcödé", LONG_EMOJI, None), ("INBOX", b64word("Ωμέγα Straße"), None),
            ("INBOX", b"Re: " + LONG_ASCII, 24)]
    return out


def notmuch(env, *args):
    p = subprocess.run(["notmuch"] + list(args), env=env, capture_output=True, timeout=300)
    assert p.returncode == 0, "notmuch %s: rc %d\n%s\n%s" % (
        " ".join(args), p.returncode, p.stdout.decode(errors="replace"),
        p.stderr.decode(errors="replace"))
    return p.stdout.decode()


def test_notmuch_new_indexes_the_mount(fresh_dovecot, mount, tmp_path):
    d = fresh_dovecot
    items = messages()
    with d.session() as c:
        for folder in ("Archive", "Café", "Café/Ünïcödé"):
            d.create(folder, imap=c)
        for i, (folder, subject, refs) in enumerate(items):
            d.append(folder, message(i, subject, refs), WHEN + dt.timedelta(minutes=i), imap=c)
    on_server = sum(len(d.fetch_folder(f, body=False)) for f in ("INBOX", "Archive", "Café/Ünïcödé"))
    assert on_server == len(items)

    m = mount(d)
    for name in os.listdir(os.path.join(m.path, "Café", "Ünïcödé")) + os.listdir(m.path):
        assert len(name.encode()) <= 200, name

    db = tmp_path / "notmuch-db"
    db.mkdir()
    cfg = tmp_path / "notmuch-config"
    cfg.write_text(
        "[database]\npath=%s\nmail_root=%s\n\n"
        "[user]\nname=Test\nprimary_email=r@notmuch.test\n\n"
        "[new]\ntags=unread;inbox\nignore=%s;%s\n\n"
        "[maildir]\nsynchronize_flags=false\n"
        % (db, m.path, harness.CONVERSATIONS, harness.CONTROL_DIR))
    env = dict(os.environ, NOTMUCH_CONFIG=str(cfg), HOME=str(tmp_path),
               XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
               XDG_DATA_HOME=str(tmp_path / "xdg-data"))
    env.pop("NOTMUCH_PROFILE", None)
    env.pop("NOTMUCH_DATABASE", None)

    notmuch(env, "new")
    assert not os.path.exists(os.path.join(m.path, ".notmuch"))
    assert int(notmuch(env, "count", "*")) == on_server
    files = notmuch(env, "search", "--output=files", "*").splitlines()
    assert len(files) == on_server, files
    for f in files:
        rel = os.path.relpath(f, m.path)
        assert not rel.startswith(".."), f
        assert rel.split(os.sep)[0] not in (harness.CONVERSATIONS, harness.CONTROL_DIR), f
        assert harness.MESSAGE_NAME.match(os.path.basename(f)), f

    # the long subjects are found, by a word from their start; their
    # names are the cut ones, the subjects notmuch read whole
    for word, n in (("Zanzibarquux", 2), ("Grüße", 1), ("Fußgängerübergänge", 1),
                    ("Straße", 1), ("plain", 24)):
        assert int(notmuch(env, "count", "subject:" + word)) == n, word
    hits = notmuch(env, "search", "--output=files", "subject:Zanzibarquux").splitlines()
    assert len(hits) == 2
    for f in hits:
        name = os.path.basename(f).encode()
        assert 195 <= len(name) <= 200, (f, len(name))
    subj = notmuch(env, "search", "--output=summary", "--format=text",
                   "id:m24@notmuch.test")
    assert "Zanzibarquux" in subj
    # a second run finds nothing new
    out = notmuch(env, "new")
    assert "No new mail" in out, out
    assert int(notmuch(env, "count", "*")) == on_server
