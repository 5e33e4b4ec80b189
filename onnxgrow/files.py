"""Where onnxgrow writes: output checks, atomic staging, and stale temporary folders.

A result is written into a temporary folder beside its destination, `.onnxgrow-<pid>-<random>`,
and renamed into place only when complete (rename is atomic within a folder), so an output is
either absent or whole. While it writes, the run holds an exclusive `flock` on `<folder>/.lock`.
A run killed with SIGKILL cannot remove its folder; the next run that stages into the same
folder removes every `.onnxgrow-<pid>-*` folder whose lock it can take (the kernel drops a dead
process's locks) — or, where the lock file is missing, whose pid no longer exists. A live run's
folder is never removed: its lock is held.

`check_output` refuses, before any work, an output path that is a folder, whose name is too long
for the file system, whose folder does not exist, or that is any file the command reads (by
`os.path.samefile` and by resolved path): onnxgrow never modifies its inputs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import uuid
from pathlib import Path

from .errors import GrowError

PREFIX = ".onnxgrow-"
_OURS = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")
LOCK = ".lock"


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):
        return False


def check_output(out, reads=()) -> Path:
    """Refuse an output path onnxgrow cannot or must not write (see the module docstring)."""
    dest = Path(out)
    if str(out) == "":
        raise GrowError("the output path is empty: name a file with -o, e.g. -o student.onnx.")
    _check_name_length(dest)
    if dest.name in ("", ".", "..") or dest.is_dir():  # before `dest.name + ".data"` below
        raise GrowError(f"the output {str(dest)!r} is a folder; name a file inside it, e.g. "
                        f"-o {str(dest / 'student.onnx')!r}.")
    data = dest.with_name(dest.name + ".data")  # written beside a model over 2 GB
    for source in reads:
        if source is None or not isinstance(source, (str, os.PathLike)):
            continue
        if _same_file(Path(source), dest) or _same_file(Path(source), data):
            raise GrowError(
                f"refusing to write over {str(source)!r} (with -o {str(dest)!r}): the command "
                "reads it, and onnxgrow never modifies its input. Choose another output path with -o."
            )
    folder = dest.parent
    if not folder.is_dir():
        raise GrowError(f"cannot write {str(dest)!r}: the folder {str(folder)!r} does not exist.")
    return dest


def _check_name_length(dest: Path) -> None:
    folder = dest.parent
    try:
        limit = os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    longest = len((dest.name + ".data").encode())  # the external data file is named after it
    too_long = longest > limit or any(len(part.encode()) > limit for part in dest.parts)
    if too_long or len(os.fsencode(dest.absolute())) >= 4096:
        raise GrowError(
            f"the output path is too long for the file system (a name may have {limit} bytes, "
            f"less 5 for a large model's '.data' file; this one has {len(dest.name.encode())}). "
            "Choose a shorter name."
        )


def clear_stale(folder: Path) -> list[Path]:
    """Remove the temporary folders of dead onnxgrow runs in `folder`; return what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _OURS.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if _is_dead(path, int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _is_dead(path: Path, pid: int) -> bool:
    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return not _pid_alive(pid)  # killed between creating the folder and locking it, or alive there
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True  # nobody holds it: the owner is gone
    except OSError:
        return False
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


@contextlib.contextmanager
def staged(path, reads=()):
    """Yield a temporary path beside `path`; on success move what was written there into place.

    The file (and `<name>.data` beside it, if written) are renamed into place only when the block
    ends without an exception; the temporary folder is removed however the block ends.
    """
    dest = check_output(path, reads)
    folder = dest.parent
    clear_stale(folder)
    # the name is chosen before the folder exists, inside the try: an interrupt at any moment
    # after it is made still reaches the clean-up below
    tmp = folder / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    lock = None
    try:
        try:
            os.mkdir(tmp, 0o700)
        except OSError as exc:
            raise GrowError(f"cannot write into {str(folder)!r}: {exc.strerror or exc}.") from None
        lock = os.open(tmp / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield tmp / dest.name
        data = tmp / (dest.name + ".data")
        try:
            if data.exists():
                os.replace(data, folder / data.name)
            os.replace(tmp / dest.name, dest)
        except OSError as exc:
            if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EXDEV):
                raise GrowError(f"cannot write {str(dest)!r}: {exc.strerror}.") from None
            raise
    finally:
        if lock is not None:
            os.close(lock)
        shutil.rmtree(tmp, ignore_errors=True)
