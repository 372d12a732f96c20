"""Export a GPT-2 music model to an ONNX model folder with an explicit KV cache.

The folder layout and tensor names are pinned in docs/contracts.md ("Model folder") and built
in one place, `bandmate.models.model_folder` (``bandmate.json`` as `ModelDescription`, the names
by `graph_io_names`, the GPT-2 config by `gpt2_config`): inputs
``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.{i}.key/.value``;
outputs ``logits`` and ``present.{i}.key/.value``. The runtime (``bandmate.models.session``)
keeps the cache itself, so the graph must take past keys/values as plain tensors: a small
wrapper turns them into a transformers ``DynamicCache`` and flattens the returned cache.

Exporter: the dynamo exporter (``torch.onnx.export(dynamo=True)``). Measured with torch 2.13 +
transformers 5.24: the legacy TorchScript exporter produces a graph whose logits are off by
~0.2 (the causal/padding mask logic of transformers 5 is traced into constants), the dynamo
exporter matches PyTorch within 2e-7. Every export ends with a parity check against PyTorch
(max |logit diff| <= 1e-4 in fp32, with and without past, several batch/length shapes), so a
regression in either library fails loudly instead of shipping a wrong model.

int8 is ``onnxruntime.quantization.quantize_dynamic`` of the *unoptimised* export (quantising an
ORT-optimised graph bakes in fusions that are specific to one ORT version and machine); its
agreement with PyTorch is reported as top-1 match rate and mean KL divergence.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bandmate.models.config import CodecConfig
from bandmate.models.model_folder import (
    FP16_NAME,
    FP32_NAME,
    INT8_NAME,
    META_NAME,
    TOKENIZER_NAME,
    ModelDescription,
    ModelDims,
    gpt2_config,
    graph_io_names,
)
from bandmate.training.onnx_checks import (
    Agreement,
    ParityError,
    cpu_session,
    quiet_root_logger,
)
from bandmate.training.run_folder import latest_checkpoint, read_json, write_json

log = logging.getLogger(__name__)

#: (batch, new tokens, past tokens) checked at the end of every export.
PARITY_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 9, 0), (3, 5, 0), (1, 1, 12), (2, 4, 7))


@dataclass(frozen=True)
class ExportConfig:
    """What ``bandmate export`` writes next to ``tokenizer.json`` and ``bandmate.json``."""

    fp32: bool = field(default=True, metadata={"help": "keep model.onnx (fp32)"})
    int8: bool = field(default=False, metadata={"help": "also write model.int8.onnx"})
    fp16: bool = field(default=False, metadata={"help": "also write model.fp16.onnx (GPU)"})
    kv: bool = field(
        default=True,
        metadata={"help": "also write the in-place decode graph (model.kv*.onnx, CPU fast path)"},
    )
    opset: int = field(default=18, metadata={"help": "ONNX opset (dynamo exporter: >= 18)"})
    tolerance: float = field(default=1e-4, metadata={"help": "max |logit diff| fp32 vs torch"})
    name: str = field(default="", metadata={"help": "model name in bandmate.json"})

    def __post_init__(self) -> None:
        if not (self.fp32 or self.int8):
            raise ValueError("export needs fp32 or int8 (or both): fp16 alone cannot be default")
        if self.opset < 18:
            raise ValueError(f"opset must be >= 18 for the dynamo exporter, got {self.opset}")
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance must be in (0, 1), got {self.tolerance}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ExportConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class KVWrapper(torch.nn.Module):
    """GPT2LMHeadModel with the KV cache as flat tensors in and out (what ONNX needs)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_layer = int(model.config.n_layer)
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name still works
        # with a warning); use whichever this version's forward() declares.
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: tuple[torch.Tensor, ...],
    ) -> tuple[torch.Tensor, ...]:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.n_layer)])
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_kw: cache},
        )
        present: list[torch.Tensor] = []
        returned = out.cache if self.cache_kw == "cache" else out.past_key_values
        for layer in returned.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def _example(model: torch.nn.Module, batch: int, seq: int, past: int, seed: int = 0) -> tuple:
    """Inputs for one call: random ids, a full mask, positions after ``past`` cached tokens."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    hd = cfg.n_embd // cfg.n_head
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    pos = torch.arange(past, past + seq).expand(batch, seq).contiguous()
    kv = tuple(
        torch.randn(batch, cfg.n_head, past, hd, generator=g) for _ in range(2 * cfg.n_layer)
    )
    return ids, mask, pos, kv


def export_onnx(model: torch.nn.Module, path: Path, opset: int = 18) -> Path:
    """Write ``model`` (a GPT2LMHeadModel in fp32) as one self-contained ONNX file."""
    from torch.export import Dim

    model = model.float().eval()
    wrapper = KVWrapper(model).eval()
    # Example sizes > 1 so torch.export does not specialise a dimension to 0 or 1.
    args = _example(model, batch=2, seq=3, past=4)
    b, s, p, t = Dim("batch"), Dim("seq"), Dim("past_seq"), Dim("total_seq")
    shapes = (
        {0: b, 1: s},
        {0: b, 1: t},
        {0: b, 1: s},
        tuple({0: b, 2: p} for _ in range(2 * wrapper.n_layer)),
    )
    ins, outs = graph_io_names(wrapper.n_layer)
    path = Path(path)
    t0 = time.perf_counter()
    quiet = contextlib.redirect_stdout(io.StringIO())  # the exporter prints its steps
    with warnings.catch_warnings(), torch.no_grad(), quiet:
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision not installed"
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.WARNING)
        torch.onnx.export(
            wrapper,
            args,
            str(path),
            input_names=ins,
            output_names=outs,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            verbose=False,
        )
    log.info("exported %s in %.1f s", path.name, time.perf_counter() - t0)
    return path


def parity_check(
    model: torch.nn.Module,
    onnx_path: Path,
    shapes: Sequence[tuple[int, int, int]] = PARITY_SHAPES,
    tolerance: float = 1e-4,
) -> dict:
    """Compare ONNX Runtime with PyTorch on random inputs, with and without past.

    Also checks a left-padded batch (mask zeros in the past), the case batched generation
    uses. Raises ParityError over ``tolerance``; returns the measured maxima.
    """
    model = model.float().eval()
    wrapper = KVWrapper(model).eval()
    sess = cpu_session(onnx_path)
    ins, _ = graph_io_names(wrapper.n_layer)
    worst_logit = worst_kv = 0.0
    cases = []
    for k, (b, s, p) in enumerate(shapes):
        ids, mask, pos, kv = _example(model, b, s, p, seed=k + 1)
        if p and b > 1:  # left padding: the first row's first past tokens are padding
            mask[0, : min(2, p)] = 0
        with torch.no_grad():
            ref = wrapper(ids, mask, pos, kv)
        feed = {n: v.numpy() for n, v in zip(ins, (ids, mask, pos, *kv), strict=True)}
        got = sess.run(None, feed)
        dl = float(np.abs(got[0] - ref[0].numpy()).max())
        dkv = max(
            (float(np.abs(g - r.numpy()).max()) for g, r in zip(got[1:], ref[1:], strict=True)),
            default=0.0,
        )
        if got[1].shape[2] != p + s:
            raise ParityError(f"present has {got[1].shape[2]} positions, expected {p + s}")
        worst_logit, worst_kv = max(worst_logit, dl), max(worst_kv, dkv)
        cases.append({"batch": b, "seq": s, "past": p, "max_abs_logit_diff": dl})
    result = {
        "max_abs_logit_diff": worst_logit,
        "max_abs_present_diff": worst_kv,
        "tolerance": tolerance,
        "cases": cases,
    }
    if not worst_logit <= tolerance or not worst_kv <= tolerance:
        raise ParityError(
            f"{Path(onnx_path).name} differs from PyTorch: max |logit diff| {worst_logit:.2e}, "
            f"max |present diff| {worst_kv:.2e} > {tolerance:.0e}. Check the torch/transformers "
            "versions against docs/training.md; the export is not usable."
        )
    log.info("parity ok: max |logit diff| %.2e (tolerance %.0e)", worst_logit, tolerance)
    return result


def agreement(
    model: torch.nn.Module, onnx_path: Path, sequences: Sequence[np.ndarray] | None = None
) -> dict:
    """Top-1 match rate and mean KL(torch || onnx) of next-token distributions.

    ``sequences`` should be real token sequences (validation samples): on random ids a
    quantised model's agreement says little about the distributions generation meets.
    """
    model = model.float().eval()
    sess = cpu_session(onnx_path)
    ins, _ = graph_io_names(int(model.config.n_layer))
    cfg = model.config
    if not sequences:
        g = np.random.default_rng(0)
        sequences = [g.integers(0, cfg.vocab_size, 64) for _ in range(4)]
    hd = cfg.n_embd // cfg.n_head
    agree = Agreement()
    for seq in sequences:
        seq = np.asarray(seq, np.int64)[: cfg.n_positions][None]
        n = seq.shape[1]
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(seq)).logits[0].numpy()
        feed = {
            "input_ids": seq,
            "attention_mask": np.ones_like(seq),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        }
        for name in ins[3:]:
            feed[name] = np.zeros((1, cfg.n_head, 0, hd), np.float32)
        got = sess.run(["logits"], feed)[0][0].astype(np.float32)
        agree.add(ref, got)
    return agree.report()


def quantize_int8(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_root_logger():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return Path(dst)


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute, fp32 inputs/outputs (the contract's dtypes stay float32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(m, str(dst))
    return Path(dst)


def model_json(
    codec: CodecConfig,
    model_cfg: Any,
    files: dict[str, str | None],
    name: str,
    labels_seen: Sequence[str],
    training: dict,
    val_loss: float,
    unigram_val_loss: float,
    extra: dict | None = None,
) -> dict:
    """The ``bandmate.json`` of a model folder (`ModelDescription`, docs/contracts.md)."""
    default = files.get("int8") or files.get("fp32")
    return ModelDescription(
        name=name,
        codec=codec,
        model=ModelDims.of(model_cfg),
        onnx={"default": default, **files},
        labels_seen=tuple(labels_seen),
        training=training,
        val_loss=float(val_loss),
        unigram_val_loss=float(unigram_val_loss),
        extra=extra or {},
    ).to_json()


def write_model_folder(
    model: torch.nn.Module,
    codec: CodecConfig,
    out_dir: Path,
    config: ExportConfig | None = None,
    labels_seen: Sequence[str] = (),
    training: dict | None = None,
    val_loss: float = float("nan"),
    unigram_val_loss: float = float("nan"),
    sequences: Sequence[np.ndarray] | None = None,
) -> dict:
    """Export ``model`` into ``out_dir`` and check it; returns the report written to it.

    The fp32 graph is always exported (int8 and fp16 derive from it) and checked; it is
    deleted afterwards when ``config.fp32`` is False (the shipped model keeps int8 only).
    """
    config = config or ExportConfig()
    vocab = codec.vocab
    if int(model.config.vocab_size) != vocab.size:
        raise ValueError(
            f"model vocab_size {model.config.vocab_size} != codec vocabulary {vocab.size}: "
            "export the run with the codec of the data it was trained on"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    fp32 = export_onnx(model, out / FP32_NAME, config.opset)
    report: dict[str, Any] = {"parity": parity_check(model, fp32, tolerance=config.tolerance)}
    files: dict[str, str | None] = {"fp32": FP32_NAME, "int8": None}
    if config.int8:
        quantize_int8(fp32, out / INT8_NAME)
        files["int8"] = INT8_NAME
        report["int8"] = agreement(model, out / INT8_NAME, sequences)
        log.info(
            "int8: top-1 match %.4f, mean KL %.2e nats",
            report["int8"]["top1_match"],
            report["int8"]["mean_kl"],
        )
    if config.fp16:
        convert_fp16(fp32, out / FP16_NAME)
        files["fp16"] = FP16_NAME
        report["fp16"] = agreement(model, out / FP16_NAME, sequences)
    if not config.fp32:
        fp32.unlink()
        files["fp32"] = None
    if config.kv:  # the CPU runtime's fast path (bandmate.training.export_fast)
        from bandmate.training.export_fast import write_fast

        kv_files, report["kv"] = write_fast(
            model,
            out,
            int8=config.int8,
            fp32=config.fp32,
            sequences=sequences,
            tolerance=config.tolerance,
        )
        files.update(kv_files)
    vocab.save(out / TOKENIZER_NAME)
    name = config.name or out.resolve().name

    def finite(x: float) -> float:
        return x if math.isfinite(x) else math.log(vocab.size)

    meta = model_json(
        codec,
        model.config,
        files,
        name,
        labels_seen,
        training or {},
        finite(val_loss),
        finite(unigram_val_loss),
        {"export": {"config": config.to_json(), **report}},
    )
    write_json(out / META_NAME, meta)
    return meta


def random_model(
    vocab_size: int, n_layer: int, n_head: int, n_embd: int, n_positions: int, seed: int = 0
) -> torch.nn.Module:
    """A randomly initialised GPT2LMHeadModel (tests, benchmarks)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = gpt2_config(ModelDims(n_layer, n_head, n_embd, n_positions, vocab_size))
    return GPT2LMHeadModel(cfg).eval()


def resolve_model_source(path: Path, checkpoint: Path | None = None) -> tuple[Path | None, Path]:
    """(run folder or None, folder holding model.safetensors) for what `bandmate export` got:
    a run folder (its latest checkpoint; older runs too), a checkpoint folder of a run, or a
    Hugging Face model folder (config.json + model.safetensors + codec.json)."""
    from bandmate.training.hf_folder import is_model_folder
    from bandmate.training.run_folder import CKPT_DIR

    path = Path(path)
    if checkpoint is not None:
        return path, Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: no checkpoint or model to export")
    if (path / CKPT_DIR).is_dir() or (path / "train_config.json").is_file():
        ckpt = latest_checkpoint(path)
        if ckpt is not None:
            return path, ckpt
        if is_model_folder(path):
            return path, path
        raise FileNotFoundError(
            f"{path} has no checkpoint yet: train longer (checkpoints every --save-every steps) "
            "or check the path"
        )
    if path.parent.name == CKPT_DIR and (path / "model.safetensors").is_file():
        return path.parent.parent, path
    if is_model_folder(path):
        return None, path
    raise FileNotFoundError(
        f"{path} is not a run folder (train_config.json, checkpoints/), a checkpoint folder "
        "or a Hugging Face model folder (config.json + model.safetensors)"
    )


def load_weights(
    model: torch.nn.Module, folder: Path, state: dict[str, torch.Tensor] | None = None
) -> torch.nn.Module:
    """Load ``folder/model.safetensors``, or ``state`` (weights made from ``folder``'s, e.g.
    an average) when given; the tied lm_head stored once or not at all."""
    from safetensors.torch import load_file

    if state is None:
        state = load_file(str(Path(folder) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise ValueError(f"{folder}: weights do not match the model ({missing}, {unexpected})")
    model.tie_weights()
    return model


def load_run_model(
    run: Path, checkpoint: Path | None = None, average: int = 1
) -> tuple[torch.nn.Module, dict]:
    """The model of a run's latest (or given) checkpoint, or of a checkpoint or Hugging Face
    model folder, with the checkpoint's state ({} for a plain model folder). ``average`` > 1:
    the mean of that checkpoint and the ``average - 1`` before it (`averaged_checkpoints`);
    the state then lists their steps under ``averaged_steps``."""
    from bandmate.training.checkpoint_average import averaged_checkpoints, mean_weights
    from bandmate.training.hf_folder import load_model_config
    from bandmate.training.run_folder import checkpoint_step
    from transformers import GPT2LMHeadModel

    run_dir, ckpt = resolve_model_source(Path(run), checkpoint)
    try:
        cfg = load_model_config(ckpt)
    except FileNotFoundError:
        if run_dir is None:
            raise
        cfg = load_model_config(run_dir)  # runs written before checkpoints had config.json
    cfg._attn_implementation = "sdpa"
    state = read_json(ckpt / "state.json") if (ckpt / "state.json").is_file() else {}
    folders = averaged_checkpoints(run_dir, ckpt, average)
    if len(folders) == 1:
        return load_weights(GPT2LMHeadModel(cfg), ckpt).eval(), state
    model = load_weights(GPT2LMHeadModel(cfg), ckpt, mean_weights(folders))
    state["averaged_steps"] = [checkpoint_step(f) for f in folders]
    log.info("weights: the mean of checkpoints %s", ", ".join(f.name for f in folders))
    return model.eval(), state


def source_codec(run: Path, checkpoint: Path | None = None) -> CodecConfig:
    """The codec config next to the weights (checkpoint or model folder), else the run's."""
    run_dir, ckpt = resolve_model_source(Path(run), checkpoint)
    for folder in (ckpt, run_dir):
        if folder is not None and (folder / "codec.json").is_file():
            return CodecConfig.from_json(read_json(folder / "codec.json"))
    raise FileNotFoundError(
        f"no codec.json in {ckpt}{f' or {run_dir}' if run_dir else ''}: a bandmate model "
        "folder needs the codec config of the data it was trained on"
    )


def _without_paths(obj: Any) -> Any:
    """The manifest with source paths cut to folder names (a model folder travels)."""
    if isinstance(obj, dict):
        return {
            k: (
                [Path(x).name for x in v]
                if k == "sources" and isinstance(v, list)
                else _without_paths(v)
            )
            for k, v in obj.items()
        }
    return obj


def labels_seen_of(summary: dict) -> list[str]:
    """The INST labels of a run's data, most frequent first: the prepare manifest's
    ``labels_seen`` (counted once, by ``bandmate prepare``); data without one (older prepared
    folders, synthetic data, a data folder no longer there) falls back to the labels that
    training counted in its samples (``data_summary.json``'s ``labels``)."""
    data_dir = summary.get("data_dir")
    if data_dir:
        manifest = Path(data_dir) / "manifest.json"
        try:
            seen = json.loads(manifest.read_text()).get("labels_seen")
        except (OSError, ValueError, AttributeError):
            seen = None
        if isinstance(seen, dict) and seen:
            return [str(k) for k in seen]  # label -> count, most frequent first
    return list(summary.get("labels", []))


def export_run(
    run: str | Path,
    out_dir: str | Path,
    config: ExportConfig | None = None,
    checkpoint: Path | None = None,
    n_agreement: int = 16,
    average: int = 1,
) -> dict:
    """Export a training run's latest checkpoint to a model folder (``bandmate export``).

    ``run`` may also be a checkpoint folder or a Hugging Face model folder (config.json,
    model.safetensors, codec.json): what `resolve_model_source` accepts. ``average`` > 1
    exports the mean of that many checkpoints (`mean_weights`).
    """
    config = config or ExportConfig()
    if not config.name:
        config = replace(config, name=Path(out_dir).resolve().name)
    model, state = load_run_model(Path(run), checkpoint, average)
    codec = source_codec(Path(run), checkpoint)
    run = resolve_model_source(Path(run), checkpoint)[0] or Path(run)
    summary = read_json(run / "data_summary.json") if (run / "data_summary.json").exists() else {}
    sequences = None
    data_dir = summary.get("data_dir")
    if data_dir and Path(data_dir).exists():
        try:
            from bandmate.training.data import open_data

            val = open_data(data_dir, "val")
            step = max(len(val) // n_agreement, 1)
            sequences = [np.asarray(val[i]) for i in range(0, len(val), step)][:n_agreement]
        except (OSError, KeyError, ValueError) as e:
            log.warning("int8 agreement on random tokens: cannot read validation data (%s)", e)
    training = {
        **{k: v for k, v in summary.items() if k not in ("labels", "data_dir")},
        "data": Path(data_dir).name if data_dir else None,  # no local paths in a model
        "manifest": _without_paths(summary.get("manifest", {})),
        "steps": state.get("step"),
        "tokens": state.get("tokens_seen"),
        **({"averaged_steps": state["averaged_steps"]} if "averaged_steps" in state else {}),
        "train_config": read_json(run / "train_config.json")
        if (run / "train_config.json").exists()
        else None,
    }
    parent = Path(out_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        meta = write_model_folder(
            model,
            codec,
            Path(tmp),
            config,
            labels_seen=labels_seen_of(summary),
            training=training,
            val_loss=float(state.get("val_loss") or float("nan")),
            unigram_val_loss=float(summary.get("unigram_val_loss") or float("nan")),
            sequences=sequences,
        )
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for f in Path(tmp).iterdir():
            shutil.move(str(f), out / f.name)
    return meta
