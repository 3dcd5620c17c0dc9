"""What a launcher prints, and where the libraries' logs go.

By default the launchers (`demo`, `evaluate`, `finetune`, `interactive`) show
one progress bar per stage, the result table and where files went. Library
INFO logs (absl, TFDS, Orbax, JAX) go to `WORKDIR/logs/PROGRAM.log` instead of
the console; warnings and errors still reach the console. absl's
`--verbosity=1` (or higher) brings everything back to the console:

  python -m simsam_jax.demo --workdir=runs/demo --verbosity=1

TFDS prints "Downloading and preparing dataset ..." with `print` whatever the
log level (its size is "Unknown size" for datasets built from local files,
which misleads); `library_stdout()` sends such prints to the same log file
while the console is quiet.

The log file is written once the run has created its workdir: a run refused
before any work leaves no file behind.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Iterator

from absl import flags
from absl import logging as absl_logging

LOG_DIR = "logs"
_state: dict = {}  # the active session: {"handler", "console_level", "path"}


class _WorkdirFileHandler(logging.Handler):
  """Appends records to `WORKDIR/logs/PROGRAM.log` once the workdir exists.

  Records that arrive before the run has created its workdir (a run refused
  before any work, or one that has not started yet) are held in memory and
  written with the first record after it; a run that never creates its
  workdir leaves no file anywhere.
  """

  def __init__(self, workdir: str, path: str):
    super().__init__(logging.INFO)
    self.workdir, self.path = workdir, path
    self.pending: list[str] = []
    self.file = None

  def emit(self, record: logging.LogRecord) -> None:
    try:
      self.pending.append(self.format(record))
      if self.file is None:
        if not os.path.isdir(self.workdir):
          return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
      self.file.write("".join(line + "\n" for line in self.pending))
      self.file.flush()
      self.pending.clear()
    except Exception:  # pylint: disable=broad-except
      self.handleError(record)

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
      self.file = None
    super().close()


def verbose() -> bool:
  """True when absl's `--verbosity` is 1 or more (logs stay on the console)."""
  try:
    return int(flags.FLAGS.verbosity) >= 1
  except (flags.UnparsedFlagAccessError, AttributeError):
    return False


def log_path(workdir: str, program: str) -> str:
  """`WORKDIR/logs/PROGRAM.log`."""
  return os.path.join(workdir, LOG_DIR, f"{program}.log")


def start(workdir: str, program: str) -> str | None:
  """Routes INFO logs to `log_path(workdir, program)`; returns that path.

  Returns None (and changes nothing) under `--verbosity>=1`. Calling it again
  (another run in the same process) replaces the previous routing.
  """
  stop()
  if verbose():
    return None
  path = os.path.abspath(log_path(workdir, program))
  handler = _WorkdirFileHandler(os.path.abspath(workdir), path)
  handler.setFormatter(absl_logging.PythonFormatter())
  root = logging.getLogger()
  root.addHandler(handler)
  console = absl_logging.get_absl_handler()
  _state.update(handler=handler, console=console, console_level=console.level, path=path,
                root_level=root.level)
  console.setLevel(logging.WARNING)
  if root.level > logging.INFO or root.level == logging.NOTSET:
    root.setLevel(logging.INFO)
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
    _state["tfds"] = tfds
  except ImportError:
    pass
  return path


def stop() -> None:
  """Undoes `start` (console level, file handler, TFDS progress bars)."""
  if not _state:
    return
  root = logging.getLogger()
  root.removeHandler(_state["handler"])
  _state["handler"].close()
  _state["console"].setLevel(_state["console_level"])
  root.setLevel(_state["root_level"])
  if "tfds" in _state:
    _state["tfds"].display_progress_bar(True)
  _state.clear()


@contextlib.contextmanager
def session(workdir: str, program: str) -> Iterator[str | None]:
  """`start` ... `stop` around a launcher's work; yields the log path or None."""
  try:
    yield start(workdir, program)
  finally:
    stop()


@contextlib.contextmanager
def library_stdout() -> Iterator[None]:
  """While the console is quiet, a library's `print`s go to the log file."""
  if not _state:
    yield
    return
  buffer = io.StringIO()
  try:
    with contextlib.redirect_stdout(buffer):
      yield
  finally:
    text = buffer.getvalue().strip()
    if text:
      logging.info("%s", text)


def where_logs_went() -> str:
  """A line for the end of a run (empty when logs stayed on the console)."""
  return f"Library logs: {_state['path']}" if _state else ""

