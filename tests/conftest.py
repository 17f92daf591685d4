"""Shared fixtures: the official reference data and small configs."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def reference_path() -> Path:
    """``$MASKFORMER_D2_REFERENCE`` or ``../shared/reference`` next to the checkout."""
    return Path(os.environ.get("MASKFORMER_D2_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    path = reference_path()
    if not (path / "README.md").exists():
        pytest.skip(f"official reference data not found at {path} (set MASKFORMER_D2_REFERENCE)")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end training, or a command-line tool in a fresh "
                                       "process (seconds to minutes on 2 CPU cores); they run in CI")
