"""Writing a cell folder, shared by both applications: every file atomically, and one writer at a time.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError

_UMASK = os.umask(0)


os.umask(_UMASK)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a plain write would honour the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch_atomic(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """A compressed numpy archive, written atomically (the report reads it with numpy alone)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    """A history table, rewritten whole (atomically) each time a row is added."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, out.getvalue())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def run_lock(out_dir: Path, wait_s: float = 15.0):
    """Exclusive lock on a run folder, so two processes never train into it at once.

    Waits a little: a kernel orphaned by a killed grid needs about a second to notice and exit.
    """
    import fcntl

    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(f"another process is training in {out_dir}; wait for it or stop it") from None
                time.sleep(0.2)
        yield


def take_grid_lock(out_root: Path):
    """One ``slotlib grid`` per grid folder: returns the open lock file (``.grid.lock``), held until it is
    closed or the process ends. A second grid on the same folder is refused here, before it starts or
    records anything there, so it can never mark a live cell of the first as failed."""
    import fcntl

    handle = open(out_root / ".grid.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"another slotlib grid is running on {out_root}; wait for it to finish (or stop "
                          f"it), or give this one another --out") from None
    return handle


def check_out_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, in one sentence, an output folder that cannot be one: empty, a file, inside a file, or
    under a folder this process cannot write (a read-only filesystem, another user's folder)."""
    if not str(path).strip():
        raise ConfigError(f"{flag} is empty; name the folder to write into, e.g. {flag} outputs/run1")
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} '{path}' is a file; name a folder (it is created if missing)")
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} '{path}' is inside '{existing}', which is a file; name a folder elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} '{path}' cannot be written: '{existing}' is read-only or not writable by this "
                          f"user; choose a writable folder")


# errno values that mean "this path cannot be written": said in one sentence, not a traceback
DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
WRITE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def write_problem(err: OSError) -> str | None:
    """One sentence for a file-system fault met while writing a run (a full disk, a read-only folder),
    or None for any other error. Nothing written before is lost: files are replaced atomically, and the
    same command resumes from last.pt once the cause is fixed."""
    if err.errno not in WRITE_ERRNOS:
        return None
    where = f" ({err.filename})" if err.filename else ""
    remedy = "free some space" if err.errno in DISK_FULL_ERRNOS else "make the folder writable or choose another --out"
    return (f"could not write{where}: {err.strerror or err}; {remedy}, then run the same command again "
            f"(a run resumes from its last.pt)")
