"""Start a training run from a model's weights instead of a random initialisation.

`bandmate train --init-from` fine-tunes what already plays: a finished run folder
(RUN/model.safetensors) or an exported model folder, shipped ones included (`band`,
`default`). A shipped folder holds only int8 ONNX graphs, so its weights are read back from the
graph's initializers and dequantized, ``(q - zero_point) * scale``: the error is at most half a
quantization step (about 1e-3 of a weight), far below what the first optimizer steps change, so
a run can go on from a model whose fp32 checkpoint is gone.

Only safe formats are read (ONNX protobuf, safetensors); the model's codec must be the data's
codec, or the token ids would mean other things.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from bandmate.models.config import CodecConfig
from bandmate.models.model_folder import META_NAME, ModelDescription
from bandmate.training.hf_folder import CODEC, WEIGHTS
from bandmate.training.run_folder import read_json


def resolve_init(spec: str) -> Path:
    """A run folder, a model folder, or the name of a shipped model."""
    path = Path(spec)
    if path.is_dir():
        return path
    from bandmate.models.registry import resolve_model

    try:
        folder = resolve_model(spec)
    except ValueError as e:
        raise FileNotFoundError(f"--init-from {spec!r}: {e}") from None
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"--init-from {spec!r}: no such folder")
    return folder


def read_init_weights(folder: Path) -> tuple[dict[str, torch.Tensor], CodecConfig, str]:
    """The weights of ``folder`` as a GPT-2 state dict (lm_head left to the tie), its codec,
    and a few words on where they came from (for the log and the model card)."""
    if (folder / WEIGHTS).exists() and (folder / CODEC).exists():
        from safetensors.torch import load_file

        codec = CodecConfig.from_json(read_json(folder / CODEC))
        return load_file(str(folder / WEIGHTS)), codec, "a run's final fp32 weights"
    if not (folder / META_NAME).exists():
        raise FileNotFoundError(
            f"{folder} is neither a finished run (model.safetensors) nor a model folder "
            f"({META_NAME})"
        )
    desc = ModelDescription.read(folder)
    for name in (desc.graph("fp32"), desc.graph("int8")):
        if name and (folder / name).exists():
            return _onnx_weights(folder / name), desc.codec, f"{name} ({_kind(name)})"
    raise FileNotFoundError(f"{folder} has no fp32 or int8 graph to read weights from")


def _kind(name: str) -> str:
    return "int8, dequantized" if "int8" in name else "fp32"


def _onnx_weights(path: Path) -> dict[str, torch.Tensor]:
    """Initializers named ``model.<state dict key>`` (fp32) or ``..._quantized`` with their
    ``_scale`` and ``_zero_point`` (int8/uint8, per tensor or per output column)."""
    import onnx
    from onnx import numpy_helper

    inits = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
    }
    out: dict[str, torch.Tensor] = {}
    for name, arr in inits.items():
        if not name.startswith("model."):
            continue
        key = name[len("model."):]
        if key.endswith("_quantized"):
            key = key[: -len("_quantized")]
            scale = inits[f"{name[:-len('_quantized')]}_scale"].astype(np.float32)
            zero = inits[f"{name[:-len('_quantized')]}_zero_point"].astype(np.float32)
            arr = (arr.astype(np.float32) - zero) * scale
        elif key.endswith(("_scale", "_zero_point")):
            continue
        out[key] = torch.from_numpy(np.array(arr, dtype=np.float32))
    if "lm_head.weight" in out:  # tied: the graph keeps the shared matrix under this name
        out["transformer.wte.weight"] = out.pop("lm_head.weight")
    return out


def load_init_weights(model: torch.nn.Module, spec: str, codec: CodecConfig) -> str:
    """Copy the weights named by ``spec`` into ``model``; raises ValueError with the flags to
    fix when the codec or a shape does not match. Returns the log line's description."""
    folder = resolve_init(spec)
    weights, init_codec, source = read_init_weights(folder)
    if init_codec.to_json() != codec.to_json():
        raise ValueError(
            f"--init-from {spec}: the model was trained on another codec than this data "
            f"({init_codec.to_json()} vs {codec.to_json()}): prepare the data with the "
            "model's settings"
        )
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})"
        for k, v in weights.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(
            f"--init-from {spec}: shapes differ: {', '.join(wrong[:3])}: give the same "
            "--n-layer, --n-head, --n-embd and --n-positions as the model"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith(".attn.bias")]
    if missing or unexpected:
        raise ValueError(
            f"--init-from {spec}: weights do not match the model (missing {missing[:4]}, "
            f"extra {unexpected[:4]}); start from the run folder, whose weights are all named"
        )
    model.tie_weights()
    return f"{folder} ({source})"
