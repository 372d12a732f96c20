"""Test support shared by tests/ and bench/ (never shipped in the bandmate package).

pytest puts tests/ on sys.path (pyproject.toml), so tests import ``support.<module>``; bench
scripts insert the tests folder into sys.path themselves.

- `support.jackserver`: a private JACK server (dummy backend) per test session or benchmark.
- `support.dawsim`: a stand-in DAW on real MIDI ports.
- `support.synthetic`: mmmtrack-shaped random prepared data (training tests, bench/train_gpu).
- `support.models`: the chorale codec (`CHORALE_CODEC`) and random-weight model folders.
"""
