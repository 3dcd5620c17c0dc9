"""Shared test setup: float32 parity settings and the sample-data location."""

import os
import pathlib
import sys

import jax
import pytest

# Parity with PyTorch needs full float32 matmuls. The environment variable
# carries the setting into the launchers' subprocesses, so that they compile
# the same programs as the tests in-process and read them from the run's
# compilation cache (below) instead of compiling them again; on CPU the
# setting does not change results (float32 and bfloat16 dots are bit-equal).
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
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


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
  """One persistent XLA compilation cache for the run: both workers, their subprocesses.

  Many tests compile the same programs (the random `tiny` SAM in-process,
  then again in the launchers' subprocesses); with the cache each is
  compiled once per run. It is new for every run (under pytest's base
  temporary folder, shared by the xdist workers), so no test depends on an
  earlier run, and a program read from it is the one compilation gives (XLA
  compiles deterministically). The size limit turns on the cache's file lock
  (two workers write to it). Tests that count compilations count cache hits
  too. A module that sets its own cache folder later keeps this one (JAX
  opens its cache once per process).
  """
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  folder = root / "jax_compilation_cache"
  folder.mkdir(exist_ok=True)
  # (jax.config name, value); the environment variable is the name in capitals.
  settings = (("jax_compilation_cache_dir", str(folder)),
              ("jax_persistent_cache_min_compile_time_secs", 0.5),
              ("jax_compilation_cache_max_size", 8 << 30))
  previous_env = {n.upper(): os.environ.get(n.upper()) for n, _ in settings}
  previous_config = {n: getattr(jax.config, n) for n, _ in settings}
  for name, value in settings:
    os.environ[name.upper()] = str(value)  # subprocesses inherit it
    jax.config.update(name, value)
  yield folder
  for name, value in previous_config.items():
    jax.config.update(name, value)
  for name, value in previous_env.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
