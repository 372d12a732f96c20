"""Model FLOPs by the Megatron-LM formula, and peak throughput of known GPUs for MFU.

Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM"), eq. 3, counts one iteration of a GPT with ``l`` layers, hidden size ``h``,
sequence ``s``, vocabulary ``V`` and batch ``B`` as

    F = 96 B s l h^2 (1 + s / (6h) + V / (16 l h))

which assumes full activation recomputation (forward counted twice: 4 passes). bandmate does
not recompute activations, so the figure it logs as ``model_tflops`` is the same derivation
with 3 passes (forward + backward = 3x forward), i.e. model FLOPs as in MFU (PaLM):

    F = 72 B s l h^2 (1 + s / (6h) + V / (12 l h))

Both count the attention score/value matmuls as dense (the causal half is not subtracted),
as Megatron-LM reports. ``megatron_eq3_tflops`` (the 96 form) is logged too, to compare with
papers that quote eq. 3.
"""

from __future__ import annotations


def flops_per_token(
    n_layer: int, n_embd: int, seq: int, vocab: int, recompute: bool = False
) -> float:
    """Training FLOPs per token (forward + backward) by the Megatron-LM formula."""
    n, h, s, v = n_layer, n_embd, seq, vocab
    if recompute:
        return 96.0 * n * h * h * (1 + s / (6 * h) + v / (16 * n * h))
    return 72.0 * n * h * h * (1 + s / (6 * h) + v / (12 * n * h))


#: Dense peak TFLOP/s (tensor cores) by GPU name substring and precision. Without sparsity.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "GH200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "B200": {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "RTX 4090": {"bf16": 165.0, "fp16": 165.0, "fp32": 82.6},
    "RTX 3090": {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The table's peak for a device name (as torch.cuda.get_device_name gives), or None."""
    for key, table in PEAK_TFLOPS.items():  # ordered: specific names before general ones
        if key.lower() in device_name.lower():
            return table.get(precision)
    return None
