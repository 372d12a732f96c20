"""One tiny random-weight model folder for the generation and session tests (exported once)."""

from __future__ import annotations

import pytest
from bandmate.models.session import ModelSession


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from support.models import export_random

    return export_random(tmp_path_factory.mktemp("model") / "tiny", seed=0)


@pytest.fixture(scope="session")
def sess(model_dir):
    return ModelSession.load(model_dir)
