"""conftest.py: the `shared_data` fixture fails under CI and skips locally when
absent; the exported matmul precision makes subprocesses lower the tests'
programs, and changes no CPU result."""

import contextlib
import io
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import conftest

TEST = '''
import conftest

def test_uses_data(shared_data):
  assert shared_data.is_dir()
'''


def test_present_folder_is_returned(tmp_path, monkeypatch):
  monkeypatch.setenv("CI", "true")
  assert conftest.require_shared_data(tmp_path) == tmp_path


def test_missing_folder_fails_under_ci(tmp_path, monkeypatch):
  monkeypatch.setenv("CI", "true")
  with pytest.raises(pytest.fail.Exception, match="CI requires it"):
    conftest.require_shared_data(tmp_path / "absent")


def test_missing_folder_skips_locally(tmp_path, monkeypatch):
  monkeypatch.delenv("CI", raising=False)
  with pytest.raises(pytest.skip.Exception, match="absent"):
    conftest.require_shared_data(tmp_path / "absent")


@pytest.mark.parametrize("ci, outcome", [("true", "1 error"), (None, "1 skipped")])
def test_fixture_outcome_in_a_pytest_run(tmp_path, ci, outcome):
  # A fresh pytest process whose conftest points at a missing folder: under
  # CI the fixture fails (reported as a setup error, exit status 1).
  here = pathlib.Path(__file__).resolve().parent
  source = (here / "conftest.py").read_text()
  source = source.replace(
      'SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"',
      f'SHARED_DATA = pathlib.Path({str(tmp_path / "absent")!r})')
  assert str(tmp_path / "absent") in source
  (tmp_path / "conftest.py").write_text(source)
  (tmp_path / "test_it.py").write_text(TEST)
  env = {k: v for k, v in os.environ.items() if k != "CI"}
  if ci is not None:
    env["CI"] = ci
  env["PYTHONPATH"] = os.pathsep.join([str(here.parent), env.get("PYTHONPATH", "")])
  run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(tmp_path / "test_it.py")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert outcome in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
  if ci is not None:
    assert run.returncode == 1 and "CI requires it" in run.stdout
  else:
    assert run.returncode == 0


# A matmul and a convolution, lowered: the text is the compilation cache's key.
PROGRAM = """
import jax, jax.numpy as jnp
f = lambda x, k: (x @ x.T, jax.lax.conv_general_dilated(
    x[None, :, :, None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
print(jax.jit(f).lower(jnp.ones((8, 8)), jnp.ones((3, 3, 1, 2))).as_text())
"""


def _lowered(env):
  return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True,
                        text=True, timeout=300, check=True).stdout


def test_subprocesses_lower_the_tests_programs():
  """A launcher's subprocess lowers the program text the tests lower in-process
  (so it reads their compilation cache entries); without the exported
  precision it would not."""
  scope = {}
  with contextlib.redirect_stdout(io.StringIO()) as ours:
    exec(PROGRAM, scope)  # pylint: disable=exec-used
  theirs = _lowered(dict(os.environ))
  assert ours.getvalue() == theirs
  assert "precision = [HIGHEST, HIGHEST]" in theirs, theirs  # the dot
  assert theirs.count("<precision HIGHEST>") == 2, theirs  # the convolution's operands
  plain = _lowered({k: v for k, v in os.environ.items() if k != "JAX_DEFAULT_MATMUL_PRECISION"})
  assert plain != theirs and "HIGHEST" not in plain


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_precision_setting_does_not_change_cpu_results(dtype):
  """conftest's premise: on CPU, "highest" and the default give bit-equal dots
  and convolutions, so sharing the setting with subprocesses changes no result."""
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (64, 96)).astype(dtype)
  y = jax.random.normal(keys[1], (96, 48)).astype(dtype)
  k = jax.random.normal(keys[2], (3, 3, 4, 8)).astype(dtype)
  image = x[None, :, :, None].repeat(4, axis=-1)

  def f(x, y, image, k):
    return x @ y, jax.lax.conv_general_dilated(image, k, (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))

  results = []
  for precision in ("default", "highest"):
    with jax.default_matmul_precision(precision):
      results.append([np.asarray(v, np.float32) for v in jax.jit(f)(x, y, image, k)])
  assert np.abs(results[0][0]).max() > 1  # not a vacuous all-zero product
  for a, b in zip(*results):
    np.testing.assert_array_equal(a, b)
