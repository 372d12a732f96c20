"""A decode-optimised ONNX graph of a GPT-2 model, with its KV cache updated in place.

Why a second graph: the contract graph (``model.onnx``, docs/contracts.md) takes past keys and
values as tensors and returns ``present`` as new tensors, so every decode step concatenates
and copies the whole cache (Concat/Transpose/Reshape were half of a decode step in the ORT
profile). This graph is built directly from the GPT-2 weights with ``onnx.helper`` around
ONNX Runtime's ``com.microsoft.GroupQueryAttention`` (num_heads == kv_num_heads: plain
multi-head attention), whose caches are preallocated ``[batch, n_head, max_seq, head_dim]``
buffers: when the caller binds the same buffer as ``past_key.{i}`` and ``present_key.{i}``
(IOBinding), the new keys/values are written into it in place and nothing is copied.

Inputs (``bandmate.models.model_folder.decode_io_names``):
  ``input_ids`` int64 [batch, seq], ``position_ids`` int64 [batch, seq],
  ``seqlens_k`` int32 [batch] (each row's valid cache length after this call, minus one),
  ``total_sequence_length`` int32 scalar (max over rows of seqlens_k + 1; equal to ``seq`` on
  a first call, which makes every row's past empty),
  ``past_key.{i}`` / ``past_value.{i}`` float32 [batch, n_head, max_seq, head_dim].
Outputs: ``logits`` float32 [batch, seq, vocab], ``present_key.{i}`` / ``present_value.{i}``.

Each row's new tokens go to cache slots ``seqlens_k[r] + 1 - seq .. seqlens_k[r]`` and attend
causally to everything before them in that row, so rows of one call may have different
lengths; a row with fewer real tokens pads at the *end* of its chunk (the padding lands in
slots the next call overwrites, and no real token attends to it). No attention mask input.

The rest is standard: token + learned position embeddings by Gather, LayerNormalization,
MatMul + Add, ``com.microsoft.FastGelu`` (GPT-2's tanh "gelu_new"), a tied lm_head as a
MatMul with the transposed token embedding. int8 is ``quantize_dynamic`` of the MatMuls with
the lm_head kept fp32 (it is small and carries the output distribution).

Every export is checked against PyTorch ``GPT2LMHeadModel``: fp32 prefill and step-by-step
decode (shared in-place buffers, several batch sizes and lengths, uneven rows) within 1e-4;
int8 top-1 agreement and KL are reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bandmate.models.kv_cache import KVBuffers
from bandmate.models.model_folder import KV_FP32_NAME, KV_INT8_NAME, decode_io_names
from bandmate.training.onnx_checks import Agreement, ParityError, cpu_session, quiet_root_logger

log = logging.getLogger(__name__)

MS = "com.microsoft"
LM_HEAD = "lm_head_matmul"

#: (batch, prompt lengths per row, decode steps) checked at the end of every export: one row,
#: several rows of equal and of uneven length, multi-token chunks after a prefill.
FAST_PARITY_CASES: tuple[tuple[tuple[int, ...], int], ...] = (
    ((9,), 6),
    ((5, 5, 5), 4),
    ((7, 3), 5),
    ((12, 1, 6), 3),
)


class FastParityError(ParityError):
    """The decode graph does not compute what the PyTorch model computes."""


def _gelu_op(cfg: Any) -> str:
    act = str(getattr(cfg, "activation_function", "gelu_new"))
    if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return "FastGelu"
    if act == "gelu":
        return "Gelu"
    raise ValueError(f"activation {act!r} has no fast-graph op: use gelu_new, gelu or re-export")


def build_fast_graph(model: torch.nn.Module, opset: int = 17) -> Any:
    """The decode graph (an ``onnx.ModelProto``) of a GPT2LMHeadModel's weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cfg = model.config
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if getattr(cfg, flag, False):
            raise ValueError(f"GPT-2 option {flag} is not supported by the fast graph")
    if not getattr(cfg, "scale_attn_weights", True):
        raise ValueError("GPT-2 without scale_attn_weights is not supported by the fast graph")
    n_layer, n_head, d = int(cfg.n_layer), int(cfg.n_head), int(cfg.n_embd)
    hd = d // n_head
    eps = float(cfg.layer_norm_epsilon)
    gelu = _gelu_op(cfg)
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    inits: list[Any] = []
    nodes: list[Any] = []

    def w(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def node(op: str, ins: list[str], outs: list[str], name: str, domain: str = "", **kw) -> str:
        nodes.append(helper.make_node(op, ins, outs, name=name, domain=domain, **kw))
        return outs[0]

    def linear(x: str, prefix: str, name: str) -> str:
        mm = node("MatMul", [x, w(f"{prefix}.weight", sd[f"{prefix}.weight"])], [f"{name}_mm"],
                  f"{name}_matmul")
        return node("Add", [mm, w(f"{prefix}.bias", sd[f"{prefix}.bias"])], [name], f"{name}_add")

    def ln(x: str, prefix: str, name: str) -> str:
        return node(
            "LayerNormalization",
            [x, w(f"{prefix}.weight", sd[f"{prefix}.weight"]), w(f"{prefix}.bias",
                                                                  sd[f"{prefix}.bias"])],
            [name],
            name,
            axis=-1,
            epsilon=eps,
        )

    ins, outs = decode_io_names(n_layer)
    wte = w("wte", sd["transformer.wte.weight"])
    wpe = w("wpe", sd["transformer.wpe.weight"])
    tok = node("Gather", [wte, "input_ids"], ["tok_emb"], "tok_gather", axis=0)
    pos = node("Gather", [wpe, "position_ids"], ["pos_emb"], "pos_gather", axis=0)
    h = node("Add", [tok, pos], ["h0"], "emb_add")
    for i in range(n_layer):
        p = f"transformer.h.{i}"
        x = ln(h, f"{p}.ln_1", f"l{i}_ln1")
        qkv = linear(x, f"{p}.attn.c_attn", f"l{i}_qkv")
        att = node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key.{i}", f"past_value.{i}", "seqlens_k",
             "total_sequence_length"],
            [f"l{i}_att", f"present_key.{i}", f"present_value.{i}"],
            f"l{i}_gqa",
            domain=MS,
            num_heads=n_head,
            kv_num_heads=n_head,
        )
        o = linear(att, f"{p}.attn.c_proj", f"l{i}_attn_out")
        h = node("Add", [h, o], [f"l{i}_h_attn"], f"l{i}_res1")
        x = ln(h, f"{p}.ln_2", f"l{i}_ln2")
        fc = node("MatMul", [x, w(f"{p}.mlp.c_fc.weight", sd[f"{p}.mlp.c_fc.weight"])],
                  [f"l{i}_fc_mm"], f"l{i}_fc_matmul")
        bias = w(f"{p}.mlp.c_fc.bias", sd[f"{p}.mlp.c_fc.bias"])
        if gelu == "FastGelu":
            act = node("FastGelu", [fc, bias], [f"l{i}_gelu"], f"l{i}_gelu", domain=MS)
        else:
            fcb = node("Add", [fc, bias], [f"l{i}_fc"], f"l{i}_fc_add")
            act = node("Gelu", [fcb], [f"l{i}_gelu"], f"l{i}_gelu", domain=MS)
        o = linear(act, f"{p}.mlp.c_proj", f"l{i}_mlp_out")
        h = node("Add", [h, o], [f"l{i}_h"], f"l{i}_res2")
    x = ln(h, "transformer.ln_f", "ln_f")
    head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    node("MatMul", [x, w("lm_head_t", head.T)], ["logits"], LM_HEAD)

    f32, i64, i32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    kv_in = ["batch", n_head, "max_seq", hd]
    inputs = [
        helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"]),
        helper.make_tensor_value_info("seqlens_k", i32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", i32, []),
        *(helper.make_tensor_value_info(n, f32, kv_in) for n in ins[4:]),
    ]
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["batch", "seq", int(cfg.vocab_size)]),
        *(helper.make_tensor_value_info(n, f32, ["batch", n_head, "present_seq", hd])
          for n in outs[1:]),
    ]
    graph = helper.make_graph(nodes, "bandmate_gpt2_kv", inputs, outputs, inits)
    m = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
        producer_name="bandmate.export_fast",
    )
    m.ir_version = min(m.ir_version, 10)
    onnx.checker.check_model(m)
    return m


def export_fast(model: torch.nn.Module, path: Path) -> Path:
    """Write the fp32 decode graph of ``model`` to ``path`` (one self-contained file)."""
    import onnx

    t0 = time.perf_counter()
    m = build_fast_graph(model.float().eval())
    onnx.save(m, str(path))
    log.info("wrote %s in %.1f s", Path(path).name, time.perf_counter() - t0)
    return Path(path)


def quantize_fast_int8(src: Path, dst: Path, keep_lm_head: bool = True) -> Path:
    """Dynamic int8 of the decode graph's MatMuls (lm_head kept fp32 when ``keep_lm_head``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_root_logger():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=[LM_HEAD] if keep_lm_head else [],
            # Shape inference does not know the contrib attention op's output types.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return Path(dst)


# ------------------------------------------------------------------------------ running


def open_fast(path: Path, threads: int = 1) -> Any:
    """A CPU InferenceSession of a decode graph (checks, tests)."""
    return cpu_session(path, threads)


# ------------------------------------------------------------------------------ checks


def _torch_logits(model: torch.nn.Module, seqs: Sequence[Sequence[int]]) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for s in seqs:
            x = torch.tensor([list(s)], dtype=torch.long)
            out.append(model(input_ids=x).logits[0].numpy())
    return out


def _decode_rows(
    model: torch.nn.Module, sess: Any, seqs: Sequence[Sequence[int]], prompt: Sequence[int],
    chunk: int = 1,
) -> list[np.ndarray]:
    """Run ``seqs`` through the decode graph: each row's ``prompt[r]`` tokens in one first
    call (end-padded to the longest), then ``chunk`` tokens per call; returns per row the
    logits of every real token (the same thing PyTorch computes in one pass)."""
    cfg = model.config
    b = len(seqs)
    kv = KVBuffers(sess, int(cfg.n_layer), int(cfg.n_head), int(cfg.n_embd) // int(cfg.n_head),
                  b, max(len(s) for s in seqs) + 4)
    got: list[list[np.ndarray]] = [[] for _ in range(b)]
    done = np.zeros(b, np.int64)
    first = True
    while any(done[r] < len(seqs[r]) for r in range(b)):
        take = [min(len(seqs[r]) - done[r], prompt[r] if first else chunk) for r in range(b)]
        n = max(1, max(take))
        ids = np.zeros((b, n), np.int64)
        pos = np.zeros((b, n), np.int64)
        for r in range(b):
            k = take[r]
            ids[r, :k] = seqs[r][done[r]: done[r] + k]
            pos[r] = np.minimum(np.arange(done[r], done[r] + n), cfg.n_positions - 1)
        logits = kv.run(ids, pos, done, np.asarray(take), first=first)
        for r in range(b):
            got[r] += list(logits[r, : take[r]].copy())
        done += np.asarray(take)
        first = False
    return [np.stack(g) for g in got]


def fast_parity_check(
    model: torch.nn.Module,
    onnx_path: Path,
    cases: Sequence[tuple[tuple[int, ...], int]] = FAST_PARITY_CASES,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> dict:
    """fp32 decode graph vs PyTorch: prefill, then step-by-step decode (1 and 3 tokens per
    call), in-place shared buffers, uneven rows. Raises FastParityError over ``tolerance``."""
    model = model.float().eval()
    sess = open_fast(onnx_path)
    g = np.random.default_rng(seed)
    worst = 0.0
    report = []
    for prompts, steps in cases:
        for chunk in (1, 3):
            seqs = [g.integers(0, model.config.vocab_size, p + steps).tolist() for p in prompts]
            ref = _torch_logits(model, seqs)
            got = _decode_rows(model, sess, seqs, list(prompts), chunk)
            diff = max(float(np.abs(a - r).max()) for a, r in zip(got, ref, strict=True))
            worst = max(worst, diff)
            report.append({"prompts": list(prompts), "steps": steps, "chunk": chunk,
                           "max_abs_logit_diff": diff})
    if not worst <= tolerance:
        raise FastParityError(
            f"{Path(onnx_path).name} differs from PyTorch: max |logit diff| {worst:.2e} > "
            f"{tolerance:.0e}; the decode graph is not usable (check the onnxruntime version "
            "against docs/generation.md)"
        )
    log.info("decode graph parity ok: max |logit diff| %.2e", worst)
    return {"max_abs_logit_diff": worst, "tolerance": tolerance, "cases": report}


def fast_agreement(
    model: torch.nn.Module, onnx_path: Path, sequences: Sequence[np.ndarray] | None = None
) -> dict:
    """Top-1 match rate and mean KL(torch || graph) of next-token distributions, decoding
    each sequence as the engine does (prefill half, then one token per call)."""
    model = model.float().eval()
    cfg = model.config
    sess = open_fast(onnx_path)
    if not sequences:
        g = np.random.default_rng(0)
        sequences = [g.integers(0, cfg.vocab_size, 64) for _ in range(4)]
    agree = Agreement()
    for s in sequences:
        s = [int(t) for t in np.asarray(s)[: cfg.n_positions]]
        ref = _torch_logits(model, [s])[0]
        got = _decode_rows(model, sess, [s], [max(1, len(s) // 2)])[0]
        agree.add(ref, got)
    return agree.report()


def write_fast(
    model: torch.nn.Module,
    out: Path,
    int8: bool,
    fp32: bool = True,
    sequences: Sequence[np.ndarray] | None = None,
    tolerance: float = 1e-4,
) -> tuple[dict[str, str | None], dict]:
    """Write the decode graph(s) into a model folder; returns the ``onnx`` entries
    (``kv_fp32``, ``kv_int8``) and the check report. The fp32 graph is always built and
    checked; it is deleted when ``fp32`` is False (int8 derives from it)."""
    out = Path(out)
    path = export_fast(model, out / KV_FP32_NAME)
    report: dict[str, Any] = {"parity": fast_parity_check(model, path, tolerance=tolerance)}
    files: dict[str, str | None] = {"kv_fp32": KV_FP32_NAME, "kv_int8": None}
    if int8:
        quantize_fast_int8(path, out / KV_INT8_NAME)
        files["kv_int8"] = KV_INT8_NAME
        report["int8"] = fast_agreement(model, out / KV_INT8_NAME, sequences)
        log.info("decode graph int8: top-1 match %.3f, mean KL %.4f nats",
                 report["int8"]["top1_match"], report["int8"]["mean_kl"])
    if not fp32:
        path.unlink()
        files["kv_fp32"] = None
    return files, report
