"""Where runs write: atomic files, the output folder's checks, and stopping on a signal.

Every file a command writes goes through :func:`atomic_write` (a temporary file in the same
folder, flushed and fsynced, then ``os.replace``), so a kill at any moment leaves either the
previous complete file or the new one, never a truncated mix. :func:`prepare_out` checks
``--out`` before any compute. :func:`stop_on_signals` turns SIGINT/SIGTERM into a request
that long loops honour at their next safe point through :func:`check_stop`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

#: free space ``prepare_out`` asks of the output folder's file system by default
MIN_FREE_BYTES = 50 * 2**20


class OutputError(ValueError):
    """A problem with an output folder or a file in it, in one line for the user."""


class Interrupted(Exception):
    """A SIGINT or SIGTERM arrived; raised by :func:`check_stop` at a safe point, or at once
    (``immediate``, anywhere in the code) by a second signal."""

    def __init__(self, signum: int, immediate: bool = False):
        self.signum = signum
        self.immediate = immediate
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        super().__init__(signal.Signals(signum).name)


def _describe_os_error(error: OSError, path: Path) -> str:
    reasons = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    return f"cannot write {path}: {reasons.get(error.errno, error.strerror or str(error))}"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create ``path`` by ``write(temporary)`` then a rename, so readers never see half a file.

    ``write`` receives a path in the same folder (same file system, so the rename is atomic)
    and must create that file. On any error the temporary file is removed, the previous
    ``path`` is untouched, and an ``OSError`` becomes an :class:`OutputError`.
    """
    path = Path(path)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        with open(temporary, "rb+") as stream:  # on disk before the rename makes it visible
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(_describe_os_error(error, path)) from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_figure(path: str | Path, figure, **savefig_options) -> Path:
    """Atomically save a matplotlib ``figure`` to ``path``, in the format its suffix names
    (given explicitly: the temporary file's suffix is .tmp)."""
    path = Path(path)
    return atomic_write(path, lambda temporary: figure.savefig(temporary, format=path.suffix[1:], **savefig_options))


def write_json(path: str | Path, document) -> Path:
    """Atomically write ``document`` as indented JSON; non-finite floats are refused."""
    return write_text(path, json.dumps(document, indent=1, allow_nan=False) + "\n")


def read_json(path: str | Path):
    """The JSON document at ``path``; an unreadable or corrupt file is an :class:`OutputError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputError(f"cannot read {path}: {error}") from error


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def prepare_out(out: str | Path, *, resume: bool = False, force: bool = False,
                min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Check ``--out`` before any compute: a folder (created if missing), writable, with space.

    An existing non-empty folder is refused unless ``resume`` (continue what is there) or
    ``force`` (replace it; old files stay until new ones are written over them).
    """
    out = Path(out)
    if resume and force:
        raise OutputError("--resume and --force exclude each other: continue the run or replace it, not both")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and not resume and not force and not is_empty_folder(out):
        raise OutputError(f"--out {out} already holds results; pass --resume to continue that run "
                          "or --force to replace it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=out, prefix=".write-probe.")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"--out {out}: {_describe_os_error(error, out).split(': ', 1)[1]}") from error
    free = shutil.disk_usage(out).free
    if free < min_free_bytes:
        raise OutputError(f"--out {out}: only {free / 2**20:.1f} MiB free on its file system "
                          f"(at least {min_free_bytes / 2**20:.0f} MiB needed)")
    return out


# ---------------------------------------------------------------------------- signals
_requested: list[int] = []  # the signal that asked to stop, if any (one per process)


def check_stop() -> None:
    """Raise :class:`Interrupted` if SIGINT/SIGTERM arrived; call it between units of work."""
    if _requested:
        raise Interrupted(_requested[0])


def _request_stop(signum, frame) -> None:
    if _requested:  # a second signal: stop now, without waiting for a safe point
        raise Interrupted(signum, immediate=True)
    _requested.append(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM request a stop that :func:`check_stop` raises."""
    previous = {signum: signal.signal(signum, _request_stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    _requested.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()
