"""``bandmate prepare``'s public names, kept where other code imports them from.

Why this module exists: the CLI (`prepare_cli`), the tests and the bench/ scripts import
these names from ``bandmate.training.prepare``; the code lives in the package
``bandmate.training.corpus`` (its docstring maps the modules). Only names are re-exported
here: a test that replaces a function with ``monkeypatch`` must patch it in the module that
looks it up (e.g. ``corpus.run.merge``, ``corpus.samples.MAX_TRACK_BARS``), not here.
"""

from __future__ import annotations

from bandmate.models.midi_io import MidiError
from bandmate.training.corpus.chunks import FileResult, read_chunk, write_chunk
from bandmate.training.corpus.config import (
    DEFAULT_FILE_TIMEOUT,
    FORMATS,
    SPLIT_BY,
    PrepareConfig,
    PrepareError,
    config_hash,
)
from bandmate.training.corpus.listing import (
    EXCLUDED_REASON,
    Listing,
    SourceFile,
    auto_chunk_files,
    content_split,
    list_sources,
    listing_hash,
    piece_key,
    select_shard,
    unit_bounds,
)
from bandmate.training.corpus.run import WORK, Progress, default_workers, log, prepare
from bandmate.training.corpus.samples import (
    MAX_TRACK_BARS,
    Encoded,
    density_edges_from_hist,
    encode_file,
    encode_segment,
    label_counts,
)
from bandmate.training.corpus.units import (
    RunContext,
    process_file,
    run_chunk,
)
from bandmate.training.corpus.units import encode_source as _process_file
from bandmate.training.shards import atomic_write_bytes

__all__ = [
    "DEFAULT_FILE_TIMEOUT",
    "EXCLUDED_REASON",
    "FORMATS",
    "MAX_TRACK_BARS",
    "SPLIT_BY",
    "WORK",
    "Encoded",
    "FileResult",
    "Listing",
    "MidiError",
    "PrepareConfig",
    "PrepareError",
    "Progress",
    "RunContext",
    "SourceFile",
    "_process_file",
    "atomic_write_bytes",
    "auto_chunk_files",
    "config_hash",
    "content_split",
    "default_workers",
    "density_edges_from_hist",
    "encode_file",
    "encode_segment",
    "label_counts",
    "list_sources",
    "listing_hash",
    "log",
    "piece_key",
    "prepare",
    "process_file",
    "read_chunk",
    "run_chunk",
    "select_shard",
    "unit_bounds",
    "write_chunk",
]
