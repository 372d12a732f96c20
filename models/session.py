"""A loaded model folder and its KV-cached ONNX Runtime decoder.

`ModelSession.load(dir)` reads ``bandmate.json`` and ``tokenizer.json`` (docs/contracts.md,
"Model folder") and opens the ONNX graph on the CUDA provider when onnxruntime-gpu finds a
working CUDA, else on the CPU provider, quietly, with one log line saying which.

`KVCache` is one batch of sequences being decoded: the first call pre-fills each row's prompt
in one run, later calls feed each row's new tokens (usually one). Rows may feed different
numbers of tokens in one call (a forced run of structure tokens next to a sampled token):
shorter rows are padded at the end of their chunk with attention-mask zeros, so every row's
real tokens see exactly their own history.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bandmate.models.config import CodecConfig
from bandmate.models.vocab import PAD, Vocab

log = logging.getLogger(__name__)

#: GM programs of basses, in the order "Add bass track" prefers them (33 = fingered bass).
GM_BASS_PROGRAMS = ("33", "32", "34", "35", "38", "39", "36", "37")
PRECISIONS = ("default", "fp32", "int8", "fp16")


class ModelError(RuntimeError):
    """A model folder is missing, incomplete or not a bandmate model."""


def default_model_dir() -> Path:
    """Where the shipped model lives (package ``bandmate.models.default``)."""
    from bandmate.models import default

    return Path(default.__file__).resolve().parent


def _threads() -> int:
    env = os.environ.get("BANDMATE_THREADS")
    if env:
        return max(1, int(env))
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    # Decoding one token is a chain of small ops: beyond 8 threads, sync costs more than it saves.
    return max(1, min(n, 8))


@dataclass
class ModelSession:
    """A model folder opened for generation (one ONNX Runtime session, reused by every job)."""

    path: Path
    meta: dict
    config: CodecConfig
    vocab: Vocab
    sess: Any
    provider: str
    onnx_file: str
    n_layer: int
    n_head: int
    head_dim: int
    n_positions: int
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    calls: int = 0  # model runs so far (every cache of this session), for stats and tests

    @property
    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kv}" for i in range(self.n_layer) for kv in ("key", "value")]

    @property
    def fetch_names(self) -> list[str]:
        present = [f"present.{i}.{kv}" for i in range(self.n_layer) for kv in ("key", "value")]
        return ["logits", *present]

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def labels_seen(self) -> tuple[str, ...]:
        return tuple(self.meta.get("labels_seen") or ())

    @property
    def fills(self) -> bool:
        return bool(self.meta.get("fills", False))

    @property
    def bars(self) -> int:
        """Bars per training sample: the model's window."""
        return self.config.bars

    @property
    def bass_label(self) -> str:
        """The INST label "Add bass track" uses: BASS for voice models, else a GM bass."""
        seen = self.labels_seen
        if "BASS" in seen or ("BASS" in self.config.voices and not seen):
            return "BASS"
        for p in GM_BASS_PROGRAMS:
            if p in seen:
                return p
        return "BASS" if "BASS" in self.config.voices else "33"

    @classmethod
    def load(
        cls, path: str | Path | None = None, precision: str = "default", device: str = "auto"
    ) -> ModelSession:
        """Open a model folder (None = the shipped model).

        ``precision`` picks the graph (default: the folder's ``onnx.default``, int8 on CPU);
        ``device`` is "auto" (CUDA when it works, else CPU), "cpu" or "cuda".
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        shipped = path is None
        folder = default_model_dir() if shipped else Path(path).expanduser()
        meta_path = folder / "bandmate.json"
        if not meta_path.is_file():
            if shipped:
                raise ModelError(
                    f"the shipped model is missing ({folder} has no bandmate.json): reinstall "
                    "bandmate, or pass a model folder made by 'bandmate export' (--model DIR)"
                )
            raise ModelError(
                f"{folder} is not a bandmate model folder (no bandmate.json): pass a folder "
                "made by 'bandmate export'"
            )
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "bandmate-model":
            raise ModelError(f"{meta_path} is not a bandmate model description")
        config = CodecConfig.from_json(meta["codec"])
        vocab = config.vocab
        tok = folder / "tokenizer.json"
        if tok.is_file() and Vocab.from_tokenizer_json(tok) != vocab:
            raise ModelError(f"{tok} does not match the codec in bandmate.json: re-export")
        m = meta["model"]
        if int(m["vocab_size"]) != vocab.size:
            raise ModelError(f"{folder}: model vocab_size {m['vocab_size']} != {vocab.size}")
        sess, provider, onnx_file = _open(folder, meta, precision, device)
        n_head = int(m["n_head"])
        return cls(
            path=folder,
            meta=meta,
            config=config,
            vocab=vocab,
            sess=sess,
            provider=provider,
            onnx_file=onnx_file,
            n_layer=int(m["n_layer"]),
            n_head=n_head,
            head_dim=int(m["n_embd"]) // n_head,
            n_positions=int(m["n_positions"]),
            input_names=[i.name for i in sess.get_inputs()],
            output_names=[o.name for o in sess.get_outputs()],
        )

    def new_cache(self, batch: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``capacity`` positions."""
        return KVCache(self, batch, capacity or self.n_positions)


def _open(folder: Path, meta: dict, precision: str, device: str) -> tuple[Any, str, str]:
    import onnxruntime as ort

    files = meta.get("onnx") or {}
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in (
        ort.get_available_providers()
    )

    def pick(on_gpu: bool) -> str:
        if precision != "default":
            name = files.get(precision)
            if not name:
                raise ModelError(f"{folder} has no {precision} graph; it has: {_have(files)}")
            return name
        # int8 dynamic quantisation is a CPU format: on a GPU, fp16 or fp32 is faster.
        order = ("fp16", "fp32", "int8") if on_gpu else (files.get("default"), "int8", "fp32")
        for k in order:
            name = files.get(k) if k in ("fp16", "fp32", "int8") else k
            if name and (folder / name).is_file():
                return name
        raise ModelError(f"{folder} has no ONNX graph ({_have(files)}): re-export the model")

    def options() -> Any:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = _threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return so

    if want_cuda:
        name = pick(True)
        ort.set_default_logger_severity(4)  # a missing CUDA library is not the user's problem
        try:
            sess = ort.InferenceSession(
                str(folder / name),
                options(),
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            )
            if sess.get_providers()[0] == "CUDAExecutionProvider":
                log.info("model %s on CUDA (%s)", folder.name, name)
                return sess, "CUDA", name
        except Exception as e:  # any CUDA failure means: use the CPU
            log.debug("CUDA provider failed: %s", e)
        finally:
            ort.set_default_logger_severity(2)
        if device == "cuda":
            raise ModelError("CUDA was asked for but does not initialise (CUDA 13 + cuDNN 9?)")
    name = pick(False)
    if not (folder / name).is_file():
        raise ModelError(f"{folder / name} is missing: re-export the model")
    so = options()
    sess = ort.InferenceSession(str(folder / name), so, providers=["CPUExecutionProvider"])
    log.info("model %s on CPU (%s, %d threads)", folder.name, name, so.intra_op_num_threads)
    return sess, "CPU", name


def _have(files: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in files.items() if v and k != "default") or "nothing"


class ContextFull(RuntimeError):
    """More tokens were fed than the model has positions."""


class KVCache:
    """Past keys/values of a batch of rows, grown one chunk per call.

    The attention mask lives in one preallocated buffer (no per-step allocation); padding
    slots (rows that fed fewer tokens than the longest row of a call) are zeros in it.
    """

    def __init__(self, session: ModelSession, batch: int, capacity: int) -> None:
        self.s = session
        self.batch = batch
        self.capacity = min(capacity, session.n_positions * 4)
        self.length = 0  # KV slots used (same for every row, padding included)
        self.pos = np.zeros(batch, np.int64)  # next position id per row (real tokens only)
        self.mask = np.zeros((batch, self.capacity), np.int64)
        shape = (batch, session.n_head, 0, session.head_dim)
        empty = np.zeros(shape, np.float32)
        self.past: list[np.ndarray] = [empty] * (2 * session.n_layer)
        self.calls = 0
        self.tokens_fed = 0

    def positions_left(self, row: int) -> int:
        return int(self.s.n_positions - self.pos[row])

    def feed(self, chunks: list[list[int]]) -> np.ndarray:
        """Run the model on each row's new tokens; returns logits [batch, vocab] at each
        row's last real token (rows that fed nothing get a padding slot and junk logits)."""
        if len(chunks) != self.batch:
            raise ValueError(f"need {self.batch} chunks, got {len(chunks)}")
        n = max(1, max(len(c) for c in chunks))
        b = self.batch
        if self.length + n > self.capacity:
            raise ContextFull(f"KV cache full ({self.capacity} slots)")
        ids = np.full((b, n), PAD, np.int64)
        pos = np.zeros((b, n), np.int64)
        lo = self.length
        last = np.zeros(b, np.int64)
        for r, c in enumerate(chunks):
            k = len(c)
            if k:
                if self.pos[r] + k > self.s.n_positions:
                    raise ContextFull(
                        f"row {r} would pass the model's {self.s.n_positions} positions"
                    )
                ids[r, :k] = c
                pos[r, :k] = np.arange(self.pos[r], self.pos[r] + k)
                self.mask[r, lo : lo + k] = 1
                self.pos[r] += k
                last[r] = k - 1
            pos[r, k:] = min(self.pos[r], self.s.n_positions - 1)
        feed = {
            "input_ids": ids,
            "attention_mask": np.ascontiguousarray(self.mask[:, : lo + n]),
            "position_ids": pos,
        }
        for name, value in zip(self.s.past_names, self.past, strict=True):
            feed[name] = value
        out = self.s.sess.run(self.s.fetch_names, feed)
        self.s.calls += 1
        self.past = out[1:]
        self.length = lo + n
        self.calls += 1
        self.tokens_fed += sum(len(c) for c in chunks)
        logits = out[0]
        return logits[np.arange(b), last]
