"""The `shared_data` fixture fails under CI and skips locally when absent."""

import os
import pathlib
import subprocess
import sys

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
