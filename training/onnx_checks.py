"""What both ONNX exporters share: CPU sessions for checks, quiet int8 quantisation and the
agreement measure (top-1 match, mean KL) between PyTorch and a graph.

`bandmate.training.export` (the contract graph) and `bandmate.training.export_fast` (the
in-place decode graph) both import this module and not each other's internals.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class ParityError(RuntimeError):
    """The exported graph does not compute what the PyTorch model computes."""


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def cpu_session(path: Path, threads: int = 0) -> Any:
    """A quiet CPU ``InferenceSession`` of ``path`` (``threads`` 0: ONNX Runtime's default)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """ONNX Runtime's quantiser logs every tensor on the root logger: keep it to errors."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


class Agreement:
    """Top-1 match rate and mean KL(reference || graph) over the positions added to it."""

    def __init__(self) -> None:
        self.match = self.total = 0
        self.kl = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        """``ref`` and ``got``: logits [positions, vocab] of the same tokens."""
        lp, lq = log_softmax(ref), log_softmax(got)
        self.kl += float((np.exp(lp) * (lp - lq)).sum())
        self.match += int((ref.argmax(-1) == got.argmax(-1)).sum())
        self.total += len(ref)

    def report(self) -> dict:
        n = max(self.total, 1)
        return {"top1_match": self.match / n, "mean_kl": self.kl / n, "tokens": self.total}
