"""tools/bench at a smoke size: the measuring modes whose figures the
README and BENCHMARKS.md quote must keep running end to end (a private
Dovecot, the mount, mbsync, bench_fuse_floor) and keep checking what
they measure. The figures themselves are printed, never judged here:
timings on a shared CI machine are no test."""

import os
import re
import subprocess
import sys

import pytest

import harness

BENCH = os.path.join(harness.REPO, "tools", "bench")


def run_bench(*args, timeout=600):
    binary = harness.convoyfs_binary()
    floor = os.path.join(os.path.dirname(binary), "bench_fuse_floor")
    if not os.path.exists(floor):
        pytest.fail("%s not built next to %s" % (floor, binary))
    p = subprocess.Popen([sys.executable, BENCH, "--binary", binary, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM: the bench unwinds, stopping the servers and mounts it
        # started, by their pids
        p.terminate()
        out, err = p.communicate(timeout=120)
        pytest.fail("tools/bench %s took over %d s:\n%s%s"
                    % (" ".join(args), timeout, out[-3000:], err[-3000:]))
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    return out


def test_reads_bench_runs_every_tool_on_every_subject():
    out = run_bench("--reads-only", "-n", "150", "--repeat", "1")
    rows = re.findall(r"(?m)^\| `(ls -l|cat|grep -rl)`, (first|again)[^|]*\|(.*)$", out)
    assert len(rows) == 6, out
    for tool, rnd, cells in rows:
        # Maildir, floor, floor without OPEN/FLUSH, convoyfs: four times
        assert len(re.findall(r"\d+\.\d\d s", cells)) == 4, (tool, rnd, cells)
    # find over the whole mount against a local tree of its shape
    finds = re.findall(r"(?m)^\| (first|again)[^|]*\|(.*)$", out)
    assert [f[0] for f in finds] == ["first", "again"], out
    for _pass, cells in finds:
        assert len(re.findall(r"\d+\.\d\d s", cells)) == 2, cells


def test_resync_bench_times_remounts_and_a_mounted_resync():
    out = run_bench("--resync-only", "-n", "300", "--repeat", "1")
    for label in ("nothing new: convoyfs exec .. idle",
                  "mounted, 100 new by push: APPEND .. listed",
                  "mounted, sync asked, nothing new .. idle"):
        assert re.search(r"(?m)^  %s\s+\d+\.\d\d s" % re.escape(label), out), (label, out)
    assert re.search(r"mounted, 100 new by push / mbsync's\s+\d+\.\d\d \(", out), out
