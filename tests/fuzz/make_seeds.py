#!/usr/bin/env python3
"""make_seeds.py CORPORA OUT: seed inputs for the fuzz targets of
tests/fuzz, made from the mail of ../shared/corpora (mbox files and
single messages). Writes OUT/<target>/<sha1> and nothing else: the
corpora stay where they are and are never copied into the repository.

Per target:
  mime    the header block of each message (as HEADER.FIELDS would
          return it, all fields kept)
  thread  the Message-ID, In-Reply-To and References lines of it
  names   the 20-byte head fuzz_names.c reads (date, zone, id), then
          the decoded Subject
  utf7    the decoded Subject, and its modified UTF-7 encoding
  imap    a greeting and a UID FETCH reply carrying three messages'
          header fields, EMAILIDs and flags, as fuzz_imap.c reads it
"""
import base64
import email.header
import hashlib
import os
import struct
import sys

MAX_MSGS = 2000  # messages read from the corpora
MAX_SEEDS = 400  # per target
MAX_HEADER = 8192

FIELDS = (b"message-id", b"subject", b"from", b"references", b"in-reply-to")


def messages(top):
    """every message under @top: files split on mbox "From " lines"""
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            if name in ("SOURCE.md", "README", "README.md"):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    data = f.read(4 << 20)
            except OSError:
                continue
            if data.startswith(b"From "):
                for part in data.split(b"\nFrom "):
                    body = part.split(b"\n", 1)
                    if len(body) == 2:
                        yield body[1]
            else:
                yield data


def header_block(msg):
    """the header lines, up to the empty line, CRLF or LF as they were"""
    end = len(msg)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = msg.find(sep)
        if i >= 0:
            end = min(end, i + len(sep) // 2)
    return msg[:end][:MAX_HEADER]


def fields(hdr, keep):
    """the lines (with their continuations) of the fields in @keep"""
    out, cur = [], False
    for line in hdr.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if cur:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        cur = name in keep
        if cur:
            out.append(line)
    return b"".join(out)


def subject(hdr):
    raw = fields(hdr, (b"subject",))
    if not raw:
        return None
    value = raw.split(b":", 1)[1].replace(b"\r", b"").replace(b"\n", b"")
    try:
        text = str(email.header.make_header(
            email.header.decode_header(value.decode("latin-1"))))
    except Exception:
        return value.strip()
    return text.strip().encode("utf-8", "replace")


def mutf7(text):
    """RFC 3501 §5.1.3 modified UTF-7 of @text"""
    out, run = [], []

    def flush():
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be"))
            out.append("&" + b.decode().rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out).encode("ascii")


def imap_reply(hdrs, base_uid):
    out = [b"Pw* OK [CAPABILITY IMAP4rev1 CONDSTORE QRESYNC OBJECTID] "
           b"fuzz ready\r\n"]
    for i, h in enumerate(hdrs):
        h = fields(h, FIELDS).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        h += b"\r\n"
        uid = base_uid + i
        out.append(b"* %d FETCH (UID %d FLAGS (\\Seen $Label%d) "
                   b"INTERNALDATE \"%02d-Jul-2024 02:44:25 -0700\" "
                   b"RFC822.SIZE %d EMAILID (M%08x) "
                   b"BODY[HEADER.FIELDS (MESSAGE-ID SUBJECT FROM REFERENCES "
                   b"IN-REPLY-TO)] {%d}\r\n"
                   % (i + 1, uid, i, i % 28 + 1, 1000 + len(h), uid, len(h))
                   + h + b")\r\n")
    out.append(b"1 OK Fetch completed.\r\n")
    return b"".join(out)


def main():
    top, out = sys.argv[1], sys.argv[2]
    seeds = {t: {} for t in ("mime", "thread", "names", "utf7", "imap")}

    def add(target, data):
        if data and len(seeds[target]) < MAX_SEEDS:
            seeds[target][hashlib.sha1(data).hexdigest()] = data

    hdrs = []
    for n, msg in enumerate(messages(top)):
        if n >= MAX_MSGS:
            break
        hdr = header_block(msg)
        if not hdr.strip():
            continue
        hdrs.append(hdr)
        add("mime", hdr)
        add("thread", fields(hdr, (b"message-id", b"references",
                                   b"in-reply-to")))
        subj = subject(hdr)
        if subj:
            add("names", struct.pack("<qiq", 1700000000 + 3600 * n,
                                     60 * (n % 25 - 12), n) + subj)
            add("utf7", subj)
            try:
                add("utf7", mutf7(subj.decode("utf-8")))
            except UnicodeDecodeError:
                pass
    for i in range(0, len(hdrs), 3):
        add("imap", imap_reply(hdrs[i:i + 3], i + 1))

    for target, items in seeds.items():
        d = os.path.join(out, target)
        os.makedirs(d, exist_ok=True)
        for name, data in items.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
    print("make_seeds: " + ", ".join("%s %d" % (t, len(v))
                                     for t, v in seeds.items()))


if __name__ == "__main__":
    main()
