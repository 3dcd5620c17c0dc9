"""Helpers shared by the launchers (evaluate, finetune): no absl flags here.

* `load_sam_model(spec, precision, attention_impl)`: the checkpoint resolver
  (`simsam_jax.checkpoint.resolve`) with the launchers' `--config.*` flag
  names: a SAM computing in `precision` with `attention_impl`, and its
  provenance dict.
* `write_atomic(path, data)`: `simsam_jax.fileio.write_atomic`.
* `config_dict(config)`: an `ml_collections.ConfigDict` as plain JSON data.
* `refuse_changed_config(workdir, current, keys)`: a workdir's recorded run
  must agree on the results-defining keys.
* `lock(workdir, shard=None)`: one run owns a workdir (or one shard of it)
  while it works; a second is refused at once (`WorkdirBusy`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from typing import Any, Iterator, Optional, Union

from ml_collections import ConfigDict

from simsam_jax import console, fileio
from simsam_jax.checkpoint.resolve import resolve_checkpoint
from simsam_jax.modeling.policy import policy_from_flags


def load_sam_model(spec: str, precision: str = "float32", attention_impl: str = "xla",
                   error: type[Exception] = ValueError):
  """(Sam, description) from a spec (`checkpoint.resolve.resolve_checkpoint`).

  `precision` ("float32" / "bfloat16") and `attention_impl` ("xla" /
  "cudnn") are checked first, before any weight is read.

  Raises:
    `error` (the launcher's own error class) naming `--config.precision`,
    `--config.attention_impl` or `--config.checkpoint` (a bad preset or
    seed, an unusable folder).
  """
  try:
    policy = policy_from_flags(precision, attention_impl,
                               precision_flag="--config.precision",
                               attention_impl_flag="--config.attention_impl")
    return resolve_checkpoint(spec, policy, flag="--config.checkpoint")
  except ValueError as e:
    if error is ValueError:
      raise
    raise error(str(e)) from None


write_atomic = fileio.write_atomic


def config_dict(config: ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort())


def refuse_changed_config(workdir: str, current: dict[str, Any], keys,
                          implied: dict[str, Any] | None = None) -> None:
  """ValueError if `workdir/config.json` differs from `current` on `keys`.

  `implied` gives, for keys that older versions did not record, the value
  their behaviour had, so that a run recorded before the key existed resumes
  when the current value keeps that behaviour (and is refused, naming the key
  and both values, when it does not).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  implied = implied or {}
  previous = {k: previous.get(k, implied.get(k)) for k in keys}
  diff = {k: (previous[k], current.get(k)) for k in keys
          if previous[k] != current.get(k)}
  if diff:
    lines = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
    raise ValueError(f"--workdir={workdir} holds a run with a different config ({lines}); "
                     "use another workdir")


LOCK_FILE = ".lock"


class WorkdirError(ValueError):
  """A workdir that cannot be used (a file in its place, or busy)."""


class WorkdirBusy(WorkdirError):
  """Another live process holds the workdir (or the shard) this run wants."""


def _shard_lock(workdir: str, index: int, num: int) -> str:
  return os.path.join(workdir, f"{LOCK_FILE}-{index:05d}-of-{num:05d}")


def _holders(paths: list[str]) -> list[str]:
  """Pids recorded in those of the lock files `paths` that a live process
  holds exclusively (unique, in order). A holder writes its pid just after
  taking the lock, so an empty file is read again for a short while."""
  pids = []
  for path in paths:
    for _ in range(_PID_READS):
      try:
        with open(path) as f:
          try:  # no exclusive holder: a pid recorded there is stale
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            break
          except BlockingIOError:
            pid = f.read().strip()
      except OSError:
        break
      if pid:
        if pid not in pids:
          pids.append(pid)
        break
      time.sleep(_PID_READ_PAUSE_S)
  return pids


_PID_READS, _PID_READ_PAUSE_S = 50, 0.01


def _lock_files(workdir: str) -> list[str]:
  try:
    names = sorted(os.listdir(workdir))
  except FileNotFoundError:
    return []
  return [os.path.join(workdir, n) for n in names
          if n == LOCK_FILE or n.startswith(LOCK_FILE + "-")]


def _is_current(f, path: str) -> bool:
  """Whether the open lock file `f` is still the file named `path` (another
  process may have removed it, or its folder, between our open and flock)."""
  try:
    named = os.stat(path)
  except FileNotFoundError:
    return False
  opened = os.fstat(f.fileno())
  return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _acquire(path: str, exclusive: bool, what: str, workdir: str):
  """Opens and flocks `path` (non-blocking); records the pid when exclusive.

  A lock file is only ever removed by a process holding it exclusively, and
  the lock is only trusted once `path` still names the locked file; else
  (the file or the workdir was removed meanwhile) the folder and the file are
  made again and the lock taken again.
  """
  while True:
    try:
      os.makedirs(workdir, exist_ok=True)
    except FileExistsError:  # made and removed by another run between two checks
      if os.path.lexists(workdir) and not os.path.isdir(workdir):
        raise
      continue
    try:
      f = open(path, "a+")
    except FileNotFoundError:  # the folder was removed just now
      continue
    try:
      fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
      f.close()
      pids = _holders(_lock_files(workdir) if what == "" else [path])
      holder = f"pid {', '.join(pids)}" if pids else "pid unknown"
      raise WorkdirBusy(f"--workdir={workdir}{what} is in use by another run ({holder}); "
                        "wait for it to finish or use another workdir") from None
    if _is_current(f, path):
      break
    f.close()  # locked a removed file: nobody else will ever contend for it
  if exclusive:
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
  return f


def _release(f, exclusive: bool) -> None:
  if exclusive:  # no stale pid for the next reader
    f.seek(0)
    f.truncate()
    f.flush()
  f.close()  # closing the descriptor releases the lock


@contextlib.contextmanager
def lock(workdir: str, shard: Optional[tuple[int, int]] = None) -> Iterator[None]:
  """Owns `workdir` (or one shard of it) for the duration of a run.

  An exclusive `fcntl.flock` on `workdir/.lock` (a sharded run: a shared
  lock on it plus an exclusive one on `.lock-IIIII-of-NNNNN`), taken at once
  or refused, never waited for: a second process started on the same workdir
  (or shard) gets `WorkdirBusy` naming the workdir and the holder's pid,
  before it does any work. Shards of one run hold the workdir together; a
  one-process run and a sharded run exclude each other. The kernel releases
  the locks when the process exits or crashes; the lock files stay (empty).

  A workdir that did not exist is created for its lock file and removed
  again when the body raises before writing anything else; a lock file this
  call created is removed again when the lock is refused or the body raises
  (so a refused run leaves an existing folder as it was). Only files nobody
  holds are removed (each under an exclusive lock), and a folder another
  process has begun to use is kept, so concurrent starts on one workdir never
  take a lock file, or the folder, from under the run that won it.

  Args:
    workdir: the run's output folder.
    shard: (index, num_shards) of a sharded run (num_shards > 1), or None.
  Raises:
    WorkdirBusy: another live process holds the workdir (or the shard).
    WorkdirError: `workdir` exists and is not a folder.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir={workdir} exists and is not a folder")
  created = not os.path.exists(workdir)
  sharded = shard is not None and shard[1] > 1
  paths = [(os.path.join(workdir, LOCK_FILE), not sharded, "")]
  if sharded:
    index, num = shard
    paths.append((_shard_lock(workdir, index, num), True, f" shard {index} of {num}"))
  new_files = [path for path, _, _ in paths if not os.path.exists(path)]
  held = []  # (file, exclusive, path)
  ok = False
  try:
    for path, exclusive, what in paths:
      held.append((_acquire(path, exclusive, what, workdir), exclusive, path))
    yield
    ok = True
  finally:
    if ok:
      for f, exclusive, _ in reversed(held):
        _release(f, exclusive)
    else:  # refused or failed: leave the folder as it was found
      _clean_up(workdir, held, new_files, created)


def _clean_up(workdir: str, held: list, new_files: list[str], created: bool) -> None:
  """After a refused or failed start: removes the workdir this call created
  if it holds nothing but lock files and the run's library log, else the
  lock files in `new_files`, each only when no other process holds it;
  then releases."""
  files = {path: f for f, _, path in held}
  for f, exclusive, _ in held:  # keep them open (the locks) until removed
    if exclusive:
      f.seek(0)
      f.truncate()
      f.flush()
  try:
    if not (created and _remove_if_only_locks(workdir, files)):
      _remove_free(new_files, files)
  finally:
    for f, _, _ in reversed(held):
      f.close()


def _take_free(paths: list[str], held: dict) -> Optional[list]:
  """Exclusive locks on all of `paths` (those in `held`, already ours,
  upgraded), or None (all given back) when another process holds one."""
  taken = []
  for path in paths:
    f = held.get(path)
    try:
      if f is None:
        f = open(path, "r+")  # never made again here
    except FileNotFoundError:  # already removed by another process
      continue
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      if f is not None and path not in held:
        f.close()
      for g, p in taken:
        if p not in held:
          g.close()
      return None
    if not _is_current(f, path):  # already removed by another process
      if path not in held:
        f.close()
      continue
    taken.append((f, path))
  return taken


def _remove_free(paths: list[str], held: dict) -> None:
  """Removes each of `paths` that no other process holds."""
  for path in paths:
    taken = _take_free([path], held)
    for f, p in taken or []:
      os.remove(p)
      if p not in held:
        f.close()


def _remove_if_only_locks(workdir: str, held: dict) -> bool:
  """Removes a workdir holding nothing but lock files and the refused run's
  own library log (`console.LOG_DIR`, written once the lock made the folder),
  when no other process holds any of its lock files; a folder another
  process has begun to use meanwhile is kept. Returns whether it was
  removed (or was gone already)."""
  locks = _lock_files(workdir)
  taken = _take_free(locks, held)
  if taken is None:  # another run holds the workdir: it is theirs now
    return False
  try:
    logs = os.path.join(workdir, console.LOG_DIR)
    try:
      others = set(os.listdir(workdir)) - {os.path.basename(p) for p in locks}
    except FileNotFoundError:
      return True
    if not (others <= {console.LOG_DIR} and (not others or os.path.isdir(logs))):
      return False
    if others:
      shutil.rmtree(logs)
    for _, path in taken:
      os.remove(path)
    try:
      os.rmdir(workdir)
    except OSError:  # another process made a lock file there just now
      pass
    return True
  finally:
    for f, path in taken:
      if path not in held:
        f.close()
