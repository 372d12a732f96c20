"""The model-folder contract: ``bandmate.json``, the ONNX graphs' tensor names, the GPT-2 config.

One place for what `bandmate export` writes and `ModelSession.load` reads (docs/contracts.md,
"Model folder"):

- `ModelDescription`, a frozen dataclass for ``bandmate.json`` (format ``bandmate-model``,
  version 1), validated on load: a missing or mistyped key raises `ModelFolderError` naming
  the key. Keys it does not model (the export report, ...) are kept in ``extra`` and written
  back unchanged, so a folder written by this version reads back equal.
- `graph_io_names` (the contract graph, ``model*.onnx``) and `decode_io_names` (the in-place
  decode graph, ``model.kv*.onnx``).
- `gpt2_config`, the one GPT-2 config factory (special token ids from `bandmate.models.vocab`).
  It imports transformers when called, so only training code pays for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bandmate.models.config import CodecConfig
from bandmate.models.instruments import ordered_labels
from bandmate.models.vocab import PAD, PIECE_START

FORMAT = "bandmate-model"
VERSION = 1
META_NAME = "bandmate.json"
TOKENIZER_NAME = "tokenizer.json"
FP32_NAME, INT8_NAME, FP16_NAME = "model.onnx", "model.int8.onnx", "model.fp16.onnx"
KV_FP32_NAME, KV_INT8_NAME = "model.kv.onnx", "model.kv.int8.onnx"
#: Keys of ``onnx`` (``default`` names one of the others' files).
GRAPH_KEYS = ("default", "fp32", "int8", "fp16", "kv_fp32", "kv_int8")
#: Token ids a GPT-2 config carries: a sample starts with PIECE_START; PAD pads batches.
BOS_ID = EOS_ID = PIECE_START
PAD_ID = PAD


class ModelFolderError(ValueError):
    """``bandmate.json`` is not a description this version of bandmate can read."""


def graph_io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """Input and output names of the contract graph (``model.onnx`` and its variants)."""
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def decode_io_names(n_layer: int) -> tuple[list[str], list[str]]:
    """Input and output names of the in-place decode graph (``model.kv*.onnx``)."""
    past = [f"past_{kv}.{i}" for i in range(n_layer) for kv in ("key", "value")]
    present = [f"present_{kv}.{i}" for i in range(n_layer) for kv in ("key", "value")]
    return ["input_ids", "position_ids", "seqlens_k", "total_sequence_length", *past], [
        "logits",
        *present,
    ]


@dataclass(frozen=True)
class ModelDims:
    """The GPT-2 shape (``bandmate.json``'s ``model``)."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int

    def __post_init__(self) -> None:
        for k in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ModelFolderError(f"model.{k} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise ModelFolderError(
                f"model.n_embd ({self.n_embd}) must be a multiple of model.n_head ({self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def of(cls, cfg: Any) -> ModelDims:
        """The dims of a transformers ``GPT2Config`` (or anything with those attributes)."""
        return cls(*(int(getattr(cfg, k)) for k in cls.__dataclass_fields__))


def gpt2_config(dims: ModelDims, dropout: float = 0.0, attention: str = "sdpa") -> Any:
    """The transformers ``GPT2Config`` of a bandmate model (training and export)."""
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=dims.vocab_size,
        n_positions=dims.n_positions,
        n_embd=dims.n_embd,
        n_layer=dims.n_layer,
        n_head=dims.n_head,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    cfg._attn_implementation = attention
    return cfg


def _need(d: Mapping, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    name = f"{where}{key}"
    if key not in d:
        raise ModelFolderError(f"bandmate.json has no {name!r}")
    v = d[key]
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise ModelFolderError(f"bandmate.json key {name!r} has the wrong type: {v!r}")
    return v


def _opt(d: Mapping, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if d.get(key) is None:
        return default
    return _need(d, key, kind)


@dataclass(frozen=True)
class ModelDescription:
    """``bandmate.json``: everything needed to run a model folder (docs/contracts.md)."""

    name: str
    codec: CodecConfig
    model: ModelDims
    onnx: Mapping[str, str | None]
    labels_seen: tuple[str, ...] = ()  # INST labels of the training data, most frequent first
    fills: bool = False
    training: Mapping[str, Any] = field(default_factory=dict)
    val_loss: float = float("nan")
    unigram_val_loss: float = float("nan")
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys, kept as they were
    version: int = VERSION
    #: The model's own sampling defaults ({"temperature", "top_p", "picked_by"}), when a sweep
    #: on its tuning pieces picked them (bench/quality.py --sweep --write-default); empty:
    #: the project's defaults (sampler.DEFAULT_*).
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx", MappingProxyType(dict(self.onnx)))
        object.__setattr__(self, "labels_seen", tuple(self.labels_seen))
        bad = [k for k in self.onnx if k not in GRAPH_KEYS]
        if bad:
            raise ModelFolderError(f"bandmate.json key 'onnx.{bad[0]}' is unknown ({GRAPH_KEYS})")
        if self.model.vocab_size != self.codec.vocab.size:
            raise ModelFolderError(
                f"bandmate.json key 'model.vocab_size' ({self.model.vocab_size}) != the codec's "
                f"vocabulary ({self.codec.vocab.size})"
            )
        object.__setattr__(self, "sampling", MappingProxyType(dict(self.sampling)))
        t, p = self.sampling.get("temperature"), self.sampling.get("top_p")
        if t is not None and not (isinstance(t, int | float) and 0.1 <= t <= 2.0):
            raise ModelFolderError(f"bandmate.json key 'sampling.temperature' must be 0.1..2.0, "
                                   f"got {t!r}")
        if p is not None and not (isinstance(p, int | float) and 0.0 < p <= 1.0):
            raise ModelFolderError(f"bandmate.json key 'sampling.top_p' must be in (0, 1], "
                                   f"got {p!r}")
        unknown = [lab for lab in self.labels_seen if lab not in self.codec.labels]
        if unknown:
            raise ModelFolderError(
                f"bandmate.json key 'labels_seen' has labels the codec lacks: {unknown[:5]}"
            )

    @property
    def add_labels(self) -> tuple[str, ...]:
        """The labels "Add track" offers (and ``jam``'s CC 21 value v picks the v-th of):
        the trained labels (the voices for a model that lists none) in vocabulary order."""
        seen = self.labels_seen or self.codec.voices
        return ordered_labels(seen, self.codec.labels)

    def graph(self, key: str) -> str | None:
        """The file of graph ``key`` ("default", "fp32", "int8", "kv_int8", ...), if any."""
        return self.onnx.get(key)

    def to_json(self) -> dict:
        """The JSON object, keys in the documented order, ``extra`` last."""
        return {
            "format": FORMAT,
            "version": self.version,
            "name": self.name,
            "codec": self.codec.to_json(),
            "labels_seen": list(self.labels_seen),
            "model": self.model.to_json(),
            "onnx": dict(self.onnx),
            "fills": self.fills,
            "training": dict(self.training),
            "val_loss": self.val_loss,
            "unigram_val_loss": self.unigram_val_loss,
            **self.extra,
            **({"sampling": dict(self.sampling)} if self.sampling else {}),
        }

    @classmethod
    def from_json(cls, d: Mapping, default_name: str = "") -> ModelDescription:
        """Validate and read a ``bandmate.json`` object; `ModelFolderError` names a bad key."""
        if not isinstance(d, Mapping):
            raise ModelFolderError("bandmate.json must hold a JSON object")
        if d.get("format") != FORMAT:
            raise ModelFolderError(f"bandmate.json key 'format' must be {FORMAT!r}, "
                                   f"got {d.get('format')!r}: not a bandmate model description")
        version = _need(d, "version", int)
        if not 1 <= version <= VERSION:
            raise ModelFolderError(
                f"bandmate.json key 'version' is {version}; this bandmate reads 1..{VERSION} "
                "(a newer bandmate made it: update bandmate)"
            )
        codec_json = _need(d, "codec", dict)
        try:
            codec = CodecConfig.from_json(codec_json)
        except (TypeError, ValueError) as e:
            raise ModelFolderError(f"bandmate.json key 'codec' is not a codec config: {e}") from e
        m = _need(d, "model", dict)
        dims = ModelDims(**{k: _need(m, k, int, "model.") for k in ModelDims.__dataclass_fields__})
        onnx = _opt(d, "onnx", dict, {})
        for k, v in onnx.items():
            if v is not None and not isinstance(v, str):
                raise ModelFolderError(f"bandmate.json key 'onnx.{k}' must be a file name or null")
        labels = _opt(d, "labels_seen", list, [])
        if not all(isinstance(x, str) for x in labels):
            raise ModelFolderError("bandmate.json key 'labels_seen' must be a list of labels")
        known = {"format", "version", "name", "codec", "labels_seen", "model", "onnx", "fills",
                 "training", "val_loss", "unigram_val_loss", "sampling"}
        return cls(
            name=_opt(d, "name", str, "") or default_name,
            codec=codec,
            model=dims,
            onnx=onnx,
            labels_seen=tuple(labels),
            fills=_opt(d, "fills", bool, False),
            training=_opt(d, "training", dict, {}),
            val_loss=float(_opt(d, "val_loss", (int, float), math.nan)),
            unigram_val_loss=float(_opt(d, "unigram_val_loss", (int, float), math.nan)),
            extra={k: v for k, v in d.items() if k not in known},
            version=version,
            sampling=_opt(d, "sampling", dict, {}),
        )

    @classmethod
    def read(cls, folder: str | Path) -> ModelDescription:
        """``folder/bandmate.json``; `ModelFolderError` when it is unreadable or invalid."""
        path = Path(folder) / META_NAME
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFolderError(f"{path} cannot be read: {e}") from e
        try:
            return cls.from_json(d, default_name=Path(folder).name)
        except ModelFolderError as e:
            raise ModelFolderError(f"{path}: {e}") from None
