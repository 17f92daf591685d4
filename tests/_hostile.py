"""Running a command on a hostile input the way the untrusted-input promise is stated.

Every hostile input must end in one readable line on stderr and a non-zero exit, within 60 s and
3 GB, with no file written outside the folders the command owns. :func:`run_hostile` runs the
command in a child process under a hard address-space cap (so a bomb that slipped through kills
the child, not the test machine) and a time limit, and reports the child's peak resident memory
(from ``wait4``); :func:`assert_refused` checks the promise.
"""
import contextlib
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]

TIME_LIMIT_S = 60
MEMORY_LIMIT_BYTES = 3 * 1024**3
# The hard cap is on address space, which torch alone reserves several GB of without touching it;
# the promise (3 GB) is checked on the peak resident memory instead.
ADDRESS_SPACE_CAP_BYTES = 16 * 1024**3

# variables that would change what the child does (an opt-in, a display)
_DROPPED_ENV = ("DISPLAY", "MASKFORMER_D2_ALLOW_UNSAFE_PICKLE")


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_bytes: int

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def _cap_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP_BYTES, ADDRESS_SPACE_CAP_BYTES))


def run_hostile(args: Sequence, *, env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
                python: bool = True, stdin: Optional[str] = "") -> Outcome:
    """Run ``python ARGS`` (or ``ARGS`` with ``python=False``) from the repository root, with the
    memory cap and time limit above; ``env`` adds to (and overrides) the environment; ``stdin`` is
    what the child reads (empty by default: a command that asks a question gets end-of-file)."""
    base = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    base.update(env or {})
    cmd = [sys.executable, *map(str, args)] if python else [str(a) for a in args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd or REPO, env=base, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_cap_address_space)
    streams = {}
    readers = [threading.Thread(target=lambda n, f: streams.__setitem__(n, f.read()), args=(n, f))
               for n, f in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for t in readers:
        t.start()
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(stdin or "")
        proc.stdin.close()
    while True:  # wait4, not Popen.wait: it gives this child's own peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - start > TIME_LIMIT_S:
            proc.kill()
            os.wait4(proc.pid, 0)
            for t in readers:
                t.join()
            tail = streams.get("stderr", "")[-1500:]
            raise AssertionError(f"{cmd[1:]} ran past {TIME_LIMIT_S} s; stderr ends: {tail}")
        time.sleep(0.05)
    seconds = time.monotonic() - start
    for t in readers:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = streams["stdout"], streams["stderr"]
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    return Outcome(proc.returncode, stdout, stderr, seconds, peak)


def assert_refused(outcome: Outcome, *needles: str) -> None:
    """Non-zero exit, no traceback, a one-line message on stderr containing every needle, within
    the time and memory promised."""
    tail = outcome.stderr[-3000:]
    assert outcome.returncode != 0, f"exit 0; stderr ends: {tail}"
    assert outcome.returncode > 0, f"killed by signal {-outcome.returncode}; stderr ends: {tail}"
    assert "Traceback" not in outcome.stderr, tail
    for needle in needles:
        assert needle in outcome.last_line, f"{needle!r} not in the last line: {outcome.last_line!r}"
    assert outcome.seconds < TIME_LIMIT_S
    assert outcome.peak_rss_bytes < MEMORY_LIMIT_BYTES, f"peak RSS {outcome.peak_rss_bytes / 2**30:.1f} GiB"


def files_under(folder: Path) -> set:
    """Every path below ``folder`` (to check that a command wrote nothing there)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}
