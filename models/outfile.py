"""Writing an output file without ever losing one: checked first, written whole, then renamed.

Why: `bandmate generate -o` once wrote over the user's own song, and a full disk or a missing
folder surfaced as a traceback after minutes of generation. So the output location is checked
before any work (`check_output`), the input is never a target, and `write_atomic` writes a
temporary file in the target's folder and renames it over the target (`os.replace`), so a
failure leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


class OutputError(ValueError):
    """An output path bandmate will not or cannot write; the message says what to do."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(out: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output that is an input (by path or by inode: a hard link or symlink too),
    a folder, or in a folder that is missing or not writable. An existing other file is fine:
    it is replaced, as compilers do."""
    out = Path(out)
    for src in inputs:
        if Path(os.path.abspath(src)) == Path(os.path.abspath(out)) or _same_file(out, Path(src)):
            raise OutputError(
                f"{out} is the input file: bandmate never writes over your file; choose "
                "another output file, e.g. " + str(out.with_name(out.stem + "-bandmate.mid"))
            )
    if out.is_dir():
        raise OutputError(f"{out} is a folder: give a file name, e.g. {out / 'out.mid'}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"folder {folder} does not exist: create it or choose another")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {folder} (permission denied): pick another folder")
    if out.exists() and not out.is_file():
        raise OutputError(f"{out} is not a regular file: choose another output file")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a normal new file is 0666-umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def describe_os_error(e: OSError, path: Path | str | None = None) -> str:
    """One line for an OSError: the file, what went wrong, what to try."""
    where = e.filename or path or "the file"
    return f"cannot write {where}: {e.strerror or e}; pick another location or free some space"
