"""``bandmate prepare``: MIDI folders -> mmmtrack token shards, in parallel, resumable.

Why a package: the job has several parts, each with its own guarantees, and a reader should
be able to take one at a time. Dependencies run one way, top to bottom:

- `config`: the options (`PrepareConfig`) and the hash a folder is checked against.
- `samples`: the pure core: windows, transpositions and their tokens, DENSITY edges.
- `listing`: which files, in which order and work units; digests, ``--exclude``, the split.
- `chunks`: a work unit's file in ``OUT/.work``, written by a worker, read by the merge.
- `units`: what a worker does with a unit: encode it, later write its samples to the shards.
- `procs`, `workers`: the worker processes: start-up, the pool, timeouts, crash isolation.
- `merge`: the units' files -> shards (or text), indexes, tokenizer and manifest.
- `run`: a run: the output folder's state, the lock, resume, progress, `prepare`.

How the guarantees are met (docs/prepare.md says more):

- **Same output for any ``--workers``.** Files are listed in a fixed order and cut into chunks
  whose boundaries depend only on the file list. A worker encodes one chunk into one file under
  ``OUT/.work/``; the parent folds the chunks' summaries in listing order and plans every
  sample's place, so which process did what, and when, never shows.
- **A killed run resumes to the same bytes.** Every file is written under a temporary name and
  renamed into place, so a chunk file either exists whole or not at all. A restart with the same
  arguments (checked by a hash of the config and of the file listing) skips finished chunks.
  The merge only reads ``.work`` and rewrites every output file, so it can be repeated; the
  manifest is written last, then ``.work`` is removed.
- **Dedup and split are functions of file content.** A file's BLAKE2 hash decides train or val
  (so no augmentation of a piece straddles the split, and the split does not move when files
  are added); the first path with a given hash wins, later copies count as ``duplicates``.
- **DENSITY needs corpus statistics**, so workers leave a slot per track and record its note
  count; the merge takes quantiles of the counts of the (un-augmented) training samples,
  then fills the slots.
- **Speed.** All per-note work is numpy (`samples`). The parallel part is kept free of the
  parent: own forked workers with a pipe each and a unit in hand (`workers.Workers`), a codec
  warmed before the fork (`procs.warm_up`), the merge planned while units finish
  (`merge.UnitFold`) and its writes done by the workers (`units.write_group`).

``bandmate.training.prepare`` re-exports the names other code imports from here.
"""
