"""Prepared shards -> Megatron-LM indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``).

For users who train the seed architecture with Megatron-LM instead of ``bandmate train``
(packaging/megatron/). The files follow megatron-core's ``IndexedDataset`` ("MMIDIDX") layout,
written here with numpy so that bandmate needs no megatron-core to produce them:

    .idx: b"MMIDIDX\\x00\\x00", u64 version 1, u8 dtype code (8 = uint16),
          u64 sequence count N, u64 document count D (= N + 1 entries),
          int32[N] sequence lengths, int64[N] byte offsets into .bin,
          int64[D] document indices (0, then the end index of each document)
    .bin: the tokens of every sequence back to back, in that dtype

Each prepared sample is one sequence and one document. Megatron-LM's GPT dataset
concatenates documents into ``--seq-length`` windows; samples start with PIECE_START, which
marks the boundary (no EOD token is appended: the mmmtrack vocabulary has none). The
end-of-document id is explicit: ``NullTokenizer`` with ``--vocab-size V`` (the mmmtrack
vocabulary) uses id V, one past every real token, and an embedding of V + 1 rows (padded by
Megatron-LM); ``megatron.json`` records it as ``eod_id``, and ``bandmate convert`` drops those
rows again. The test reads these files back with megatron-core's own ``IndexedDataset``.

Usage: ``python -m bandmate.training.megatron DATA -o OUT`` writes
``OUT/{train,val}_text_document.{bin,idx}`` and ``OUT/megatron.json`` (vocabulary size, eod id,
the codec config for ``bandmate convert --codec OUT``, and the arguments to pass to Megatron-LM).
"""

from __future__ import annotations

import argparse
import json
import logging
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

log = logging.getLogger(__name__)

HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}


def write_indexed(
    sequences: Iterable[np.ndarray], prefix: str | Path, dtype: type = np.uint16
) -> tuple[Path, Path]:
    """Write sequences (one document each) as PREFIX.bin / PREFIX.idx; returns both paths."""
    if dtype not in DTYPE_CODES:
        raise ValueError(f"dtype must be one of {[d.__name__ for d in DTYPE_CODES]}")
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    bin_path, idx_path = prefix.with_suffix(".bin"), prefix.with_suffix(".idx")
    lengths: list[int] = []
    info = np.iinfo(dtype)
    with open(bin_path, "wb") as f:
        for seq in sequences:
            a = np.asarray(seq)
            if a.size and (a.min() < info.min or a.max() > info.max):
                raise ValueError(f"token ids outside {np.dtype(dtype).name}: pick a wider dtype")
            f.write(a.astype(dtype, copy=False).tobytes(order="C"))
            lengths.append(int(a.size))
    n = len(lengths)
    lens = np.asarray(lengths, np.int32)
    pointers = np.zeros(n, np.int64)
    if n:
        pointers[1:] = np.cumsum(lens[:-1].astype(np.int64)) * np.dtype(dtype).itemsize
    docs = np.arange(n + 1, dtype=np.int64)
    with open(idx_path, "wb") as f:
        f.write(HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", n))
        f.write(struct.pack("<Q", len(docs)))
        f.write(lens.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(docs.tobytes(order="C"))
    return bin_path, idx_path


def read_indexed(prefix: str | Path) -> list[np.ndarray]:
    """Read a PREFIX.bin/.idx pair back (for checks; Megatron-LM has its own reader)."""
    prefix = Path(prefix)
    raw = prefix.with_suffix(".idx").read_bytes()
    if raw[:9] != HEADER:
        raise ValueError(f"{prefix}.idx is not a Megatron indexed dataset")
    (version,) = struct.unpack_from("<Q", raw, 9)
    (code,) = struct.unpack_from("<B", raw, 17)
    n, _docs = struct.unpack_from("<QQ", raw, 18)
    if version != 1:
        raise ValueError(f"unsupported index version {version}")
    dtype = {v: k for k, v in DTYPE_CODES.items()}[code]
    lens = np.frombuffer(raw, np.int32, n, 34)
    ptrs = np.frombuffer(raw, np.int64, n, 34 + 4 * n)
    data = np.memmap(prefix.with_suffix(".bin"), dtype, "r")
    size = np.dtype(dtype).itemsize
    return [np.asarray(data[p // size : p // size + n_]) for p, n_ in zip(ptrs, lens, strict=True)]


def export_megatron(data_dir: str | Path, out: str | Path) -> dict:
    """Write every split of a prepared data folder as Megatron indexed datasets."""
    from bandmate.models.config import CodecConfig
    from bandmate.training.data import open_data

    data_dir, out = Path(data_dir), Path(out)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    codec = CodecConfig.from_json(manifest["codec"])
    vocab_size = codec.vocab.size
    result: dict = {
        "vocab_size": vocab_size,
        "eod_id": vocab_size,  # megatron-core NullTokenizer: one past the real ids
        "codec": codec.to_json(),
        "splits": {},
    }
    for split in ("train", "val"):
        try:
            s = open_data(data_dir, split)
        except FileNotFoundError:
            continue
        prefix = out / f"{split}_text_document"
        seqs = (s[i] for i in tqdm(range(len(s)), desc=split, unit="sample"))
        write_indexed(seqs, prefix)
        result["splits"][split] = {"prefix": str(prefix), "documents": len(s)}
        log.info("wrote %s.{bin,idx}: %d documents", prefix, len(s))
    result["megatron_args"] = [
        "--tokenizer-type", "NullTokenizer", "--vocab-size", str(vocab_size),
        "--train-data-path", str(out / "train_text_document"),
        "--valid-data-path", str(out / "val_text_document"),
    ]  # fmt: skip
    (out / "megatron.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bandmate.training.megatron",
        description="Write `bandmate prepare` shards as Megatron-LM indexed datasets.",
    )
    p.add_argument("data", help="folder written by `bandmate prepare`")
    p.add_argument("-o", "--out", required=True, help="output folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (Path(args.data) / "manifest.json").exists():
        log.error("%s/manifest.json missing: run `bandmate prepare` first", args.data)
        return 2
    export_megatron(args.data, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
