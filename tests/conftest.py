"""Shared test setup: float32 parity settings and the sample-data location."""

import os
import pathlib
import sys

import jax
import pytest

# Parity with PyTorch needs full float32 matmuls.
jax.config.update("jax_default_matmul_precision", "highest")

sys.path.insert(0, os.path.dirname(__file__))

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real sample images (outside the repository); skips when absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"sample data folder {SHARED_DATA} is absent (it lives beside the "
                "repository, never inside it)")
  return SHARED_DATA
