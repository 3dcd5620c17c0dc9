"""Launchers' console: library INFO logs go to WORKDIR/logs, not the console."""

import logging
import os

from absl import flags
from absl import logging as absl_logging

import pytest

from simsam_jax import console


@pytest.fixture(autouse=True)
def _default_verbosity():
  """absl's default --verbosity=0 (INFO), as a launcher has after parsing its
  flags, whatever an earlier test in this process left."""
  flags.FLAGS.mark_as_parsed()
  before = flags.FLAGS.verbosity
  absl_logging.set_verbosity(absl_logging.INFO)
  yield
  absl_logging.set_verbosity(before)


def test_info_goes_to_the_file_warnings_to_both(tmp_path):
  flags.FLAGS.mark_as_parsed()
  workdir = str(tmp_path / "run")
  with console.session(workdir, "demo") as path:
    assert path == os.path.join(workdir, "logs", "demo.log")
    absl_logging.info("before the workdir exists")
    assert not os.path.exists(workdir)  # held in memory, nothing written
    os.makedirs(workdir)
    console_handler = absl_logging.get_absl_handler()
    assert console_handler.level == logging.WARNING  # INFO records no longer reach it
    absl_logging.info("library detail %d", 1)
    logging.getLogger("tensorflow_datasets").info("Downloading and preparing")
    absl_logging.warning("something to see")
    with console.library_stdout():
      print("Downloading and preparing dataset Unknown size")
    assert console.where_logs_went().endswith("demo.log")
  text = open(path).read()
  assert text.index("before the workdir exists") < text.index("library detail 1")
  assert "library detail 1" in text and "Downloading and preparing" in text
  assert "Unknown size" in text and "something to see" in text
  # after the session the console is back to normal, the file no longer grows
  absl_logging.info("after the session")
  assert "after the session" not in open(path).read()
  assert console.where_logs_went() == ""
  assert absl_logging.get_absl_handler().level < logging.WARNING


def test_verbosity_keeps_logs_on_the_console(tmp_path):
  flags.FLAGS.mark_as_parsed()
  old = flags.FLAGS.verbosity
  flags.FLAGS.verbosity = 1
  try:
    with console.session(str(tmp_path / "run"), "demo") as path:
      assert path is None
      absl_logging.info("visible")
    assert not (tmp_path / "run").exists()
  finally:
    flags.FLAGS.verbosity = old


def test_a_workdir_that_is_a_file_gets_no_log(tmp_path):
  flags.FLAGS.mark_as_parsed()
  a_file = tmp_path / "file"
  a_file.write_text("x")
  with console.session(str(a_file), "demo"):
    absl_logging.warning("refused")
  assert a_file.read_text() == "x"
