"""Random-weight model folders and the chorale codec, for tests and benchmarks.

Test support (tests/support), not part of the bandmate package: `export_random` writes a
complete model folder (real ONNX graphs, tokenizer.json, bandmate.json) through the same
`bandmate.training.export.write_model_folder` as a trained export, with random weights.
"""

from __future__ import annotations

from pathlib import Path

from bandmate.models.config import CodecConfig
from bandmate.training.export import ExportConfig, random_model, write_model_folder

#: The chorale codec that tests and random models use (density edges = note counts per voice
#: in 4 bars; the real ones come from ``bandmate prepare``'s manifest).
CHORALE_CODEC = CodecConfig(
    voices=("SOPRANO", "ALTO", "TENOR", "BASS"), density_bins=4, density_edges=(8.0, 12.0, 16.0)
)
#: A band codec (General MIDI families and drums, as models/band) and the labels its random
#: models claim to have seen (most frequent first, as prepare lists them).
BAND_CODEC = CodecConfig(label_scheme="gm-family", density_bins=4,
                         density_edges=(12.0, 28.0, 52.0))
BAND_LABELS = ("24", "DRUMS", "32", "48", "80", "0")


def export_random(
    out_dir: str | Path,
    codec: CodecConfig | None = None,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 64,
    n_positions: int = 512,
    seed: int = 0,
    int8: bool = False,
    kv: bool = False,
    labels_seen: tuple[str, ...] | None = None,
) -> Path:
    """A complete model folder with random weights, for tests of everything downstream.

    Same files and names as a trained export (``kv``: plus the in-place decode graph that
    the CPU runtime prefers, bandmate.training.export_fast); ``val_loss`` is ln(vocab size) (what an
    untrained model scores) and ``training`` says ``random_weights``. Takes a few seconds.
    """
    codec = codec or CHORALE_CODEC
    model = random_model(codec.vocab.size, n_layer, n_head, n_embd, n_positions, seed)
    out = Path(out_dir)
    write_model_folder(
        model,
        codec,
        out,
        ExportConfig(int8=int8, kv=kv, name=f"random-{n_layer}x{n_embd}-seed{seed}"),
        labels_seen=codec.voices if labels_seen is None else labels_seen,
        training={"random_weights": True, "seed": seed, "steps": 0, "tokens": 0},
    )
    return out
