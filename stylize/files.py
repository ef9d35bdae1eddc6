"""Files: atomic writes (a temporary file in the destination folder, fsynced, then renamed into place,
so a crash or a kill never leaves a half-written output or checkpoint) and content hashes."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

try:
    import fcntl  # POSIX: locks that the system releases when their process dies, even by SIGKILL
except ImportError:  # Windows: no locks; a concurrent run there is the user's to avoid
    fcntl = None


CACHE_ENV = "STYLIZE_CACHE"


def cache_root() -> Path:
    """Where stylize caches what it can make again (ONNX graphs: graphs.py; decoded training photos:
    data.py): $STYLIZE_CACHE, else ~/.cache/stylize."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stylize").expanduser()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new temporary file in `folder` (its descriptor and path), locked by this process while it is
    written, so that a temporary nobody holds is known to be stale (in_use), with an output's usual mode."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    if fcntl:
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    return fd, tmp


def atomic_write(path: Path, write: Callable[[BinaryIO], None], prefix: str, suffix: str) -> Path:
    """Call write(file) on a temporary file named prefix...suffix beside path, then rename it to path."""
    fd, tmp = temporary(path.parent, prefix, suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: Path) -> str:
    """A file's content hash, read in 1 MB blocks (models are named by it in the ONNX graph cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def in_use(path: Path) -> bool:
    """Whether a live process holds this temporary file (atomic_write locks it while writing); a
    killed run's temporaries are free, so they can go."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path, waiting: Callable[[], None] | None = None):
    """Hold `folder` for one run at a time: a second run into it calls waiting() and waits until the
    first is done (then, with --skip-existing, finds its photos written and skips them)."""
    if fcntl is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            if waiting:
                waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
