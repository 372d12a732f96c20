"""A loaded model folder and its KV-cached ONNX Runtime decoder.

`ModelSession.load(dir)` reads ``bandmate.json`` (validated, as
`bandmate.models.model_folder.ModelDescription`) and ``tokenizer.json`` (docs/contracts.md,
"Model folder") and opens the ONNX graph on the CUDA provider when onnxruntime-gpu finds a
working CUDA *and* the folder has a graph made for a GPU (fp16 or fp32), else on the CPU
provider, quietly, with one log line saying which and why. A folder with only int8 graphs (the
shipped model) always runs on the CPU, on its decode graph: dynamic int8 quantisation is a CPU
format (ORT's CUDA provider runs its integer ops slowly or on the CPU anyway), and the CPU
decode graph is the measured fast path.

`KVCache` is one batch of sequences being decoded: the first call pre-fills each row's prompt
in one run, later calls feed each row's new tokens (usually one). Rows may feed different
numbers of tokens in one call (a forced run of structure tokens next to a sampled token):
shorter rows are padded at the end of their chunk with attention-mask zeros, so every row's
real tokens see exactly their own history.

Fast path: when the folder has the decode graph (``onnx.kv_int8`` / ``kv_fp32``, written by
``bandmate.training.export_fast``) and the session runs on the CPU, `InPlaceKVCache` is used
instead: the keys/values live in preallocated ``[batch, n_head, max_seq, head_dim]`` buffers
(reused across caches of the same batch size) that ONNX Runtime's GroupQueryAttention updates
in place through IOBinding, so a decode step copies no cache. Folders without it (older
exports, fp16, CUDA) use `KVCache` over the contract graph.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bandmate.models.codec import Codec
from bandmate.models.config import CodecConfig
from bandmate.models.kv_cache import ContextFull, InPlaceKVCache, KVBuffers, KVCache
from bandmate.models.model_folder import (
    META_NAME,
    TOKENIZER_NAME,
    ModelDescription,
    ModelFolderError,
    graph_io_names,
)
from bandmate.models.sampler import SamplingConfig
from bandmate.models.vocab import Vocab

log = logging.getLogger(__name__)

__all__ = [
    "ContextFull",
    "InPlaceKVCache",
    "KVBuffers",
    "KVCache",
    "ModelError",
    "ModelSession",
    "default_model_dir",
]

#: GM programs of basses, in the order "Add bass track" prefers them (33 = fingered bass).
GM_BASS_PROGRAMS = ("33", "32", "34", "35", "38", "39", "36", "37")
PRECISIONS = ("default", "fp32", "int8", "fp16")


class ModelError(RuntimeError):
    """A model folder is missing, incomplete or not a bandmate model."""


def default_model_dir() -> Path:
    """Where the shipped model lives (package ``bandmate.models.default``)."""
    from bandmate.models import default

    return Path(default.__file__).resolve().parent


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _threads(fast: bool = False) -> int:
    env = os.environ.get("BANDMATE_THREADS")
    if env:
        return max(1, int(env))
    n = _cpus()
    if fast:
        # The decode graph's step is ~1.5k small kernels: measured on a 2-core CPU, 1 thread
        # is as fast as 2 when idle and 2-4x faster when the other core is busy (docs/
        # generation.md); bigger machines get a few threads for prefills.
        return max(1, min(n // 2, 4))
    # Decoding one token is a chain of small ops: beyond 8 threads, sync costs more than it saves.
    return max(1, min(n, 8))


@dataclass
class ModelSession:
    """A model folder opened for generation (one ONNX Runtime session, reused by every job)."""

    path: Path
    description: ModelDescription
    config: CodecConfig
    vocab: Vocab
    onnx_session: Any  # onnxruntime.InferenceSession
    provider: str
    onnx_file: str
    n_layer: int
    n_head: int
    head_dim: int
    n_positions: int
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    calls: int = 0  # model runs so far (every cache of this session), for stats and tests
    fast: bool = False  # onnx_session is the in-place decode graph (InPlaceKVCache)
    _pool: dict = field(default_factory=dict, repr=False)  # batch -> [KVBuffers, ...]
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def codec(self) -> Codec:
        """The model's codec: every prompt plan is written through it (built once, not per
        plan, with the session's vocabulary)."""
        return Codec(self.config, self.vocab)

    @property
    def past_names(self) -> list[str]:
        return graph_io_names(self.n_layer)[0][3:]

    @property
    def fetch_names(self) -> list[str]:
        return graph_io_names(self.n_layer)[1]

    @property
    def meta(self) -> dict:
        """``bandmate.json`` as JSON (`description` is the typed form)."""
        return self.description.to_json()

    @property
    def name(self) -> str:
        return self.description.name or self.path.name

    @property
    def labels_seen(self) -> tuple[str, ...]:
        return self.description.labels_seen

    @property
    def add_labels(self) -> tuple[str, ...]:
        """What "Add track" offers, in the fixed order pickers and CC 21 use."""
        return self.description.add_labels

    @property
    def fills(self) -> bool:
        return self.description.fills

    def default_sampling(self, **changes: Any) -> SamplingConfig:
        """How this model samples unless the user says otherwise: its own defaults when a
        sweep on its tuning pieces picked them (bandmate.json ``sampling``), else the
        project's; ``changes`` (e.g. seed) on top. The CLI, jam, the app and the benchmarks
        all start here, so a model plays the same everywhere."""
        own = {k: float(v) for k, v in self.description.sampling.items()
               if k in ("temperature", "top_p")}  # fmt: skip
        return SamplingConfig(**{**own, **changes})

    @property
    def bars(self) -> int:
        """Bars per training sample: the model's window."""
        return self.config.bars

    @property
    def bass_label(self) -> str:
        """The INST label "Add bass track" uses: BASS for voice models, else a GM bass."""
        seen = self.labels_seen
        if self.config.label_scheme == "gm-family":
            return "32"  # the bass family
        if "BASS" in seen or ("BASS" in self.config.voices and not seen):
            return "BASS"
        for p in GM_BASS_PROGRAMS:
            if p in seen:
                return p
        return "BASS" if "BASS" in self.config.voices else "33"

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        precision: str = "default",
        device: str = "auto",
        fast: bool | None = None,
    ) -> ModelSession:
        """Open a model folder (None = the shipped default model), or a shipped model by
        name ("default", "band": `bandmate.models.registry`).

        ``precision`` picks the graph (default: the folder's ``onnx.default``, int8 on CPU);
        ``device`` is "auto" (CUDA when it works, else CPU), "cpu" or "cuda". ``fast``: use
        the folder's in-place decode graph on the CPU (None: when present; False: the
        contract graph, e.g. to compare; True: required).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
        from bandmate.models.registry import UnknownModel, resolve_model

        try:
            resolved = resolve_model(path)  # a shipped name ("band") -> its folder
        except UnknownModel as e:
            raise ModelError(str(e)) from None
        shipped = resolved is None or resolved == default_model_dir()
        folder = default_model_dir() if resolved is None else resolved
        meta_path = folder / META_NAME
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
        try:
            desc = ModelDescription.read(folder)
        except ModelFolderError as e:
            raise ModelError(f"{e}: re-export the model with 'bandmate export'") from None
        config = desc.codec
        vocab = config.vocab
        tok = folder / TOKENIZER_NAME
        if tok.is_file() and Vocab.from_tokenizer_json(tok) != vocab:
            raise ModelError(f"{tok} does not match the codec in bandmate.json: re-export")
        sess, provider, onnx_file, is_fast = _open(folder, dict(desc.onnx), precision, device,
                                                   fast)
        m = desc.model
        return cls(
            path=folder,
            description=desc,
            config=config,
            vocab=vocab,
            onnx_session=sess,
            provider=provider,
            onnx_file=onnx_file,
            n_layer=m.n_layer,
            n_head=m.n_head,
            head_dim=m.head_dim,
            n_positions=m.n_positions,
            input_names=[i.name for i in sess.get_inputs()],
            output_names=[o.name for o in sess.get_outputs()],
            fast=is_fast,
        )

    def new_cache(self, batch: int, capacity: int | None = None) -> KVCache | InPlaceKVCache:
        """An empty KV cache for ``batch`` rows of up to ``capacity`` positions."""
        if self.fast:
            return InPlaceKVCache(self, batch, capacity or self.n_positions)
        return KVCache(self, batch, capacity or self.n_positions)

    def _lease_kv(self, owner: object, batch: int) -> KVBuffers:
        """Cache buffers for ``batch`` rows, reused from a cache that no longer exists when
        there is one (allocating ~50 MB per row for a 2048-position model each window would
        cost more than the prefill). At most two buffer sets are kept, of the batch size last
        asked for (plus those still in use)."""
        with self._pool_lock:
            for b in [b for b in self._pool if b != batch]:  # keep one batch size's buffers
                live = [kv for kv in self._pool[b] if kv.owner is not None and kv.owner()]
                if live:
                    self._pool[b] = live
                else:
                    del self._pool[b]
            sets = self._pool.setdefault(batch, [])
            for kv in sets:
                if kv.owner is None or kv.owner() is None:
                    kv.owner = weakref.ref(owner)
                    return kv
            kv = KVBuffers(self.onnx_session, self.n_layer, self.n_head, self.head_dim, batch,
                           self.n_positions + 1)
            kv.owner = weakref.ref(owner)
            if len(sets) < 2:
                sets.append(kv)
            return kv


def _fast_graph(folder: Path, files: dict, precision: str) -> str | None:
    """The decode graph for ``precision`` on the CPU, when the folder has it."""
    if precision == "fp16":
        return None
    if precision == "default":
        default = files.get("default")
        order = ("kv_fp32", "kv_int8") if default == files.get("fp32") else ("kv_int8", "kv_fp32")
    else:
        order = (f"kv_{precision}",)
    for k in order:
        name = files.get(k)
        if name and (folder / name).is_file():
            return name
    return None


def _gpu_graph(folder: Path, files: dict, precision: str) -> str | None:
    """The graph to run on CUDA: one made for a GPU (fp16, else fp32), never int8."""
    if precision == "int8":
        return None
    for k in ("fp16", "fp32") if precision == "default" else (precision,):
        name = files.get(k)
        if name and (folder / name).is_file():
            return name
    return None


def _open(
    folder: Path, files: dict, precision: str, device: str, fast: bool | None = None
) -> tuple[Any, str, str, bool]:
    import onnxruntime as ort

    has_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in (
        ort.get_available_providers()
    )
    gpu_name = _gpu_graph(folder, files, precision) if has_cuda else None
    why_cpu = ""
    if has_cuda and gpu_name is None:
        if device == "cuda":
            raise ModelError(
                f"{folder} has no graph for CUDA (only int8, a CPU format: {_have(files)}); "
                "export with --fp16 (or keep fp32) to run it on a GPU"
            )
        why_cpu = "; CUDA not used: int8 is a CPU format and the folder has no fp16/fp32 graph"
    want_cuda = gpu_name is not None

    def pick() -> str:  # the graph for the CPU
        if precision != "default":
            name = files.get(precision)
            if not name:
                raise ModelError(f"{folder} has no {precision} graph; it has: {_have(files)}")
            return name
        for k in (files.get("default"), "int8", "fp32"):
            name = files.get(k) if k in ("fp16", "fp32", "int8") else k
            if name and (folder / name).is_file():
                return name
        raise ModelError(f"{folder} has no ONNX graph ({_have(files)}): re-export the model")

    def options(fast_graph: bool = False) -> Any:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = _threads(fast_graph)
        # Spinning workers steal the core the caller needs when the machine is busy.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return so

    if want_cuda:
        name = gpu_name
        ort.set_default_logger_severity(4)  # a missing CUDA library is not the user's problem
        try:
            sess = ort.InferenceSession(
                str(folder / name),
                options(),
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
            )
            if sess.get_providers()[0] == "CUDAExecutionProvider":
                log.info("model %s on CUDA (%s)", folder.name, name)
                return sess, "CUDA", name, False
        except Exception as e:  # any CUDA failure means: use the CPU
            log.debug("CUDA provider failed: %s", e)
        finally:
            ort.set_default_logger_severity(2)
        why_cpu = "; CUDA does not initialise"
        if device == "cuda":
            raise ModelError("CUDA was asked for but does not initialise (CUDA 13 + cuDNN 9?)")
    kv_name = _fast_graph(folder, files, precision) if fast is not False else None
    if fast and not kv_name:
        raise ModelError(
            f"{folder} has no decode graph for precision {precision} (model.kv*.onnx): "
            "re-export the model with this version of bandmate"
        )
    if kv_name:
        so = options(True)
        sess = ort.InferenceSession(str(folder / kv_name), so, providers=["CPUExecutionProvider"])
        log.info(
            "model %s on CPU (%s, in-place KV cache, %d threads%s)",
            folder.name,
            kv_name,
            so.intra_op_num_threads,
            why_cpu,
        )
        return sess, "CPU", kv_name, True
    name = pick()
    if not (folder / name).is_file():
        raise ModelError(f"{folder / name} is missing: re-export the model")
    so = options()
    sess = ort.InferenceSession(str(folder / name), so, providers=["CPUExecutionProvider"])
    log.info(
        "model %s on CPU (%s, %d threads%s)", folder.name, name, so.intra_op_num_threads, why_cpu
    )
    return sess, "CPU", name, False


def _have(files: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in files.items() if v and k != "default") or "nothing"
