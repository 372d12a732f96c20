"""bandmate: an AI bandmate for composers, linked to any DAW by MIDI."""

__version__ = "0.1.0"
