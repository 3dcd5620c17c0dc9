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


def require_shared_data(folder: pathlib.Path = SHARED_DATA) -> pathlib.Path:
  """`folder` if it exists; else fails under CI (env `CI` set), skips locally.

  CI always has the sample data beside the repository, so a missing folder
  there is a broken checkout, never a reason to skip the tests that use it.
  """
  if not folder.is_dir():
    message = (f"sample data folder {folder} is absent (it lives beside the "
               "repository, never inside it)")
    if os.environ.get("CI"):
      pytest.fail(message + "; CI requires it", pytrace=False)
    pytest.skip(message)
  return folder


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The real sample images (outside the repository); see `require_shared_data`."""
  return require_shared_data()
