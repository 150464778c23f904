"""`realmodels` tests need the converted offline models (python -m ml models install-offline); they are
skipped when the folders are not there, so the suite never downloads or converts anything."""

from __future__ import annotations

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "realmodels: needs the converted offline models (skipped without them)")


@pytest.fixture
def offline_models():
    from ml.offline.install import MODELS, offline_root

    root = offline_root() / "offline"
    paths = {k: root / k for k in MODELS}
    missing = [str(p) for p in paths.values() if not (p / "config.json").exists()]
    if missing:
        pytest.skip(
            f"converted offline models not found ({', '.join(missing)}); run python -m ml models install-offline"
        )
    return paths
