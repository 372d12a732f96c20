"""bandmate.models: the mmmtrack codec, vocabulary, ONNX Runtime session, sampler and tasks."""

from bandmate.models.types import DRUM_CHANNEL, STEPS_PER_BAR, Note, Piece, Track

__all__ = ["DRUM_CHANNEL", "STEPS_PER_BAR", "Note", "Piece", "Track"]
