"""Writing so that a killed process never leaves half a file under its final name, and cleaning
up what killed writers left behind.

The checkpointer and the converters write files with :func:`write_atomically`; the shapes dataset
is generated in a working folder renamed into place. Both name their work in progress after the
writing process (``.<name>.<random>.tmp-<pid>``, ``<folder>.tmp-<pid>-<random>``), so that
:func:`leftovers_of_dead_writers` can tell what a killed process left from what a live one is
still writing.

The temporary file is created with ``tempfile.mkstemp`` (``O_CREAT | O_EXCL``): a name someone
planted in the folder beforehand (a symlink to a file elsewhere, say) is never opened, so the
write cannot be redirected; the final ``os.replace`` swaps the directory entry itself and does
not follow a symlink at the final name either.
"""
import contextlib
import os
import re
import stat
import tempfile
from typing import Any, BinaryIO, Callable, List, Pattern

__all__ = ["TEMPORARY_FILE", "write_atomically", "leftovers_of_dead_writers"]

#: the temporary files of :func:`write_atomically`; group 1 is the writer's pid
TEMPORARY_FILE = re.compile(r"\..+\.tmp-(\d+)")


def _umask() -> int:
    """This process's umask, read without changing it where Linux allows (``os.umask`` sets it,
    which would race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: str) -> int:
    """The permissions ``open(path, "wb")`` would leave: an existing regular file keeps its own,
    a new file gets 0o666 less the umask (``mkstemp`` itself creates 0o600)."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def write_atomically(path: str, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` so that it is either its old content or the complete new one, never a part.

    ``write(f)`` fills a new temporary file in the same folder (a hidden
    ``.<name>.<random>.tmp-<pid>``, created exclusively, so never a file or symlink that was
    there before), which gets the mode a plain ``open`` would give, is flushed, fsynced and
    renamed over ``path``; a failure removes it. A process killed in the middle leaves only that
    temporary file, which no reader takes for a checkpoint.
    """
    folder, name = os.path.split(os.path.abspath(path))
    mode = _final_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp-{os.getpid()}", dir=folder)
    try:
        # opened by name through the descriptor mkstemp made, so that ``f.name`` is the path
        with open(tmp, "wb", opener=lambda _path, _flags: fd) as f:
            os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def leftovers_of_dead_writers(folder: str, pattern: Pattern[str] = TEMPORARY_FILE) -> List[str]:
    """Names in ``folder`` matching ``pattern`` (group 1: the writer's pid) whose writer is gone."""
    if not os.path.isdir(folder):
        return []
    found = [(name, pattern.fullmatch(name)) for name in sorted(os.listdir(folder))]
    return [name for name, match in found if match is not None and _is_gone(int(match.group(1)))]
