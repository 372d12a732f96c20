"""Which files a run reads, in which order, in which work units, and on which side of the split.

Why a module of its own: the guarantees of ``bandmate prepare`` start here. The listing is
a fixed order (each SRC's files sorted by relative path), ``--shard`` parts are chosen by a
hash of that relative path, work units are cut from the file count alone, and a file's split
and dedup go by its content digest (or by its piece name): so the output never depends on
the number of workers or on the machine, and a resumed run sees the same units (checked by
`listing_hash`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bandmate.models.midi_io import MIDI_SUFFIXES
from bandmate.training.corpus.config import PrepareConfig, PrepareError

#: The skip reason of a file left out by ``--exclude`` (a benchmark's held-out set).
EXCLUDED_REASON = "excluded: its content digest is in the --exclude list (held out)"

@dataclass(frozen=True)
class SourceFile:
    """One MIDI file of the listing."""

    path: str  # as reported (SRC joined with the path below it)
    abspath: str
    key: str  # "SRC index/relative path": stable across machines, used by --shard


def list_sources(sources: Sequence[str]) -> list[SourceFile]:
    """MIDI files under each SRC (recursive), each SRC's files sorted by relative path."""
    out: list[SourceFile] = []
    for si, src in enumerate(sources):
        p = Path(src)
        if p.is_file():
            out.append(SourceFile(src, str(p.resolve()), f"{si}/{p.name}"))
            continue
        if not p.is_dir():
            raise PrepareError(f"{src}: no such file or folder")
        found = []
        base = os.path.abspath(p)
        shown = str(p)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            sub = os.path.relpath(dirpath, base).replace(os.sep, "/")
            prefix = "" if sub == "." else sub + "/"
            for fn in filenames:
                if fn.lower().endswith(MIDI_SUFFIXES) and not fn.startswith("."):
                    found.append(prefix + fn)
        found.sort()
        for rel in found:
            out.append(SourceFile(f"{shown}/{rel}", f"{base}/{rel}", f"{si}/{rel}"))
    return out


def select_shard(files: list[SourceFile], shard: tuple[int, int]) -> list[SourceFile]:
    """The disjoint part I of N: by a hash of each file's SRC-relative path."""
    i, n = shard
    if n == 1:
        return files
    return [
        f
        for f in files
        if int.from_bytes(hashlib.sha1(f.key.encode()).digest()[:8], "big") % n == i
    ]


_REVISION_PREFIX = re.compile(r"^[0-9a-f]{10}_")
_LUMP_PREFIX = re.compile(r"^d_")
_REMIX_SUFFIX = re.compile(r"([-_](remix|remaster))?[-_]*$")


def piece_key(path: str) -> str:
    """The piece a file belongs to, from its name: lower case, no extension, no leading
    revision prefix of 10 hex digits and '_' (Freedoom's history/ files are
    ``<blob-prefix>_<original name>``), no Doom lump prefix ``d_`` (older files lack it),
    no trailing ``-remix``/``_remaster`` or ``_``: every revision of a piece shares one key."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1].lower()
    stem = name.rsplit(".", 1)[0] if "." in name else name
    key = _LUMP_PREFIX.sub("", _REVISION_PREFIX.sub("", stem))
    return _REMIX_SUFFIX.sub("", key) or key


def content_split(digest: bytes, val_fraction: float) -> str:
    """train or val from a file's content hash: stable, and the same on every machine."""
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"


def auto_chunk_files(n_files: int) -> int:
    """Files per work unit: small enough to balance 2..100 workers, large for big corpora."""
    return int(min(256, max(8, n_files // 64)))


def unit_bounds(n_files: int, chunk_files: int = 0) -> list[int]:
    """Where each work unit starts in the file list (and, last, where the list ends).

    `chunk_files` > 0: units of that many files. 0 (automatic): units of
    `auto_chunk_files`, except at the end of the list, where units halve (two of each size
    down to one file): the scheduler hands them out last, so the run does not end with one
    worker busy on a whole unit while the others wait. A function of the file count only,
    so a resumed run cuts the list the same way.
    """
    if n_files <= 0:
        return [0]
    if chunk_files > 0:
        return [*range(0, n_files, chunk_files), n_files]
    base = auto_chunk_files(n_files)
    tail = []
    size = base // 2
    while size >= 1:
        tail += [size, size]
        size //= 2
    while tail and sum(tail) > n_files // 4:  # the tail stays a small part of the list
        tail.pop(0)
    body = n_files - sum(tail)
    sizes = [base] * (body // base) + ([body % base] if body % base else []) + tail
    bounds = [0]
    for k in sizes:
        bounds.append(bounds[-1] + k)
    return bounds


def listing_hash(files: list[SourceFile], sizes: list[int] | None = None) -> str:
    """Hash of paths, sizes and mtimes (a resumed run must see the same files); fills
    `sizes` with each file's bytes, which the scheduler uses."""
    lines = []
    stat = os.stat
    for f in files:
        try:
            st = stat(f.abspath)
            lines.append(f"{f.abspath}\0{st.st_size}\0{st.st_mtime_ns}\n")
            size = st.st_size
        except OSError:
            lines.append(f"{f.abspath}\0missing\n")
            size = 0
        if sizes is not None:
            sizes.append(size)
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


class Listing:
    """The files of a run, with their listing hash and sizes computed once, when first asked
    for: a fresh run asks only after its workers have their first units."""

    def __init__(self, files: list[SourceFile]) -> None:
        self.files = files
        self._hash: str | None = None
        self._sizes: list[int] = []

    def _stat(self) -> None:
        if self._hash is None:
            self._hash = listing_hash(self.files, self._sizes)

    @property
    def hash(self) -> str:
        self._stat()
        return self._hash

    @property
    def sizes(self) -> list[int]:
        self._stat()
        return self._sizes


def content_digest(data: bytes) -> bytes:
    """A file's BLAKE2b-16 digest: what dedup, ``--exclude`` and the split by content use."""
    return hashlib.blake2b(data, digest_size=16).digest()


def is_excluded(digest: bytes, cfg: PrepareConfig) -> bool:
    """Held out by content (``--exclude``), so a copy under another name is held out too."""
    return bool(cfg.exclude) and digest.hex() in cfg.exclude


def split_of(path: str, digest: bytes, cfg: PrepareConfig) -> str:
    """train or val for a file: by its content digest, or (``--split-by piece``) by a hash
    of its `piece_key`, so every revision of a piece falls on the same side."""
    if cfg.split_by == "piece":
        key = hashlib.blake2b(piece_key(path).encode(), digest_size=16).digest()
        return content_split(key, cfg.val_fraction)
    return content_split(digest, cfg.val_fraction)
