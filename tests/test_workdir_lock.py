"""`simsam_jax.workdir.lock` under concurrency: several processes started
together on one workdir (or one shard of it), many times over.

The body is a tiny function, not an evaluation, so hundreds of attempts take
seconds. Processes are forked; the children only use `os` and `fcntl`.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import traceback

import pytest

from simsam_jax import workdir as workdir_lib

_FORK = multiprocessing.get_context("fork")
PROCESSES = 4


def _attempt(workdir, shard, barrier, results, release, fail):
  """One contender: waits for the others, then tries to own the workdir."""
  try:
    barrier.wait(timeout=30)
    try:
      with workdir_lib.lock(workdir, shard):
        results.put(("won", os.getpid(), ""))
        release.wait(timeout=30)
        if fail:
          raise RuntimeError("the run failed before writing anything")
        with open(os.path.join(workdir, "out.txt"), "w") as f:
          f.write(str(os.getpid()))
    except workdir_lib.WorkdirBusy as error:
      results.put(("busy", os.getpid(), str(error)))
    except RuntimeError:
      pass
  except Exception:  # pylint: disable=broad-exception-caught
    results.put(("error", os.getpid(), traceback.format_exc()))


def _lock_names(shard):
  names = [workdir_lib.LOCK_FILE]
  if shard is not None:
    names.append(os.path.basename(workdir_lib._shard_lock("", *shard)))  # pylint: disable=protected-access
  return sorted(names)


@pytest.mark.parametrize("shard", [None, (1, 2)])
def test_exactly_one_of_several_processes_wins_each_time(tmp_path, shard):
  trials = 24
  for trial in range(trials):
    workdir = str(tmp_path / f"w{trial}")
    if trial % 3 == 2:  # an existing, empty workdir
      os.makedirs(workdir)
    fail = trial % 2 == 1  # the winner's body raises: the lock's clean-up runs
    barrier = _FORK.Barrier(PROCESSES)
    results, release = _FORK.Queue(), _FORK.Event()
    procs = [_FORK.Process(target=_attempt, args=(workdir, shard, barrier, results, release,
                                                  fail)) for _ in range(PROCESSES)]
    for p in procs:
      p.start()
    try:
      outcomes = [results.get(timeout=60) for _ in range(PROCESSES)]
    finally:
      release.set()
      for p in procs:
        p.join(timeout=60)
    errors = [text for kind, _, text in outcomes if kind == "error"]
    assert not errors, errors[0]
    winners = [pid for kind, pid, _ in outcomes if kind == "won"]
    assert len(winners) == 1, (trial, outcomes)
    what = "" if shard is None else f" shard {shard[0]} of {shard[1]}"
    for kind, _, text in outcomes:
      if kind == "busy":
        assert text.startswith(f"--workdir={workdir}{what} is in use by another run "
                               f"(pid {winners[0]})"), text
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    if fail:
      # The failed run leaves at most free, empty lock files (a lock file
      # or folder another contender made while the winner held the workdir
      # is that contender's, and it keeps what it finds in use); alone, it
      # leaves the folder as it was (tests/test_evaluate_plugins.py).
      left = sorted(os.listdir(workdir)) if os.path.exists(workdir) else []
      assert set(left) <= set(_lock_names(shard)), (trial, left)
      for name in left:
        with open(os.path.join(workdir, name)) as f:
          assert f.read() == "", (trial, name)
      continue
    assert sorted(os.listdir(workdir)) == _lock_names(shard) + ["out.txt"], trial
    for name in _lock_names(shard):  # released: no stale pid
      with open(os.path.join(workdir, name)) as f:
        assert f.read() == "", (trial, name)
    with open(os.path.join(workdir, "out.txt")) as f:
      assert f.read() == str(winners[0])


def _contend(workdir, shard, marks, rounds, seed, barrier, results):
  """Takes the lock `rounds` times as fast as it can; inside, checks that
  nobody else is inside (an O_EXCL marker outside the workdir)."""
  rng = random.Random(seed)
  wins = overlaps = 0
  try:
    barrier.wait(timeout=30)
    for _ in range(rounds):
      try:
        with workdir_lib.lock(workdir, shard):
          wins += 1
          marker = os.path.join(marks, "inside")
          try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
          except FileExistsError:
            overlaps += 1
          else:
            os.close(fd)
            time.sleep(0.002)  # a window for a second holder to show up
            os.remove(marker)
          if rng.random() < 0.5:
            raise RuntimeError("failed run")
      except (workdir_lib.WorkdirBusy, RuntimeError):
        pass
    results.put(("done", wins, overlaps, ""))
  except Exception:  # pylint: disable=broad-exception-caught
    results.put(("error", wins, overlaps, traceback.format_exc()))


@pytest.mark.parametrize("shard", [None, (0, 3)])
def test_a_workdir_created_and_removed_in_a_loop_is_never_held_twice(tmp_path, shard):
  workdir, marks = str(tmp_path / "w"), tmp_path / "marks"
  marks.mkdir()
  barrier, results = _FORK.Barrier(PROCESSES), _FORK.Queue()
  procs = [_FORK.Process(target=_contend, args=(workdir, shard, str(marks), 150, seed,
                                                barrier, results))
           for seed in range(PROCESSES)]
  for p in procs:
    p.start()
  outcomes = [results.get(timeout=120) for _ in range(PROCESSES)]
  for p in procs:
    p.join(timeout=60)
  errors = [text for kind, _, _, text in outcomes if kind == "error"]
  assert not errors, errors[0]
  assert sum(o[2] for o in outcomes) == 0  # never two holders at once
  assert sum(o[1] for o in outcomes) > 0
  assert list(marks.iterdir()) == []
  if os.path.exists(workdir):  # the last winner succeeded: only its lock files
    assert set(os.listdir(workdir)) <= set(_lock_names(shard))
    for name in os.listdir(workdir):
      with open(os.path.join(workdir, name)) as f:
        assert f.read() == ""


@pytest.mark.parametrize("shard", [None, (0, 2)])
def test_a_failed_run_keeps_what_it_wrote_and_drops_its_lock_files(tmp_path, shard):
  workdir = tmp_path / "w"
  with pytest.raises(RuntimeError):
    with workdir_lib.lock(str(workdir), shard):
      (workdir / "rows.csv").write_text("id\n")
      raise RuntimeError("failed after writing")
  assert os.listdir(workdir) == ["rows.csv"]
  with pytest.raises(RuntimeError):  # nothing written: the new folder goes
    with workdir_lib.lock(str(tmp_path / "v"), shard):
      raise RuntimeError("failed at once")
  assert not (tmp_path / "v").exists()


def test_older_records_resume_through_implied_values(tmp_path):
  """A key an older run did not record counts as the behaviour it had."""
  import json
  (tmp_path / "config.json").write_text(json.dumps({"k": 3}))
  implied = {"first_prompt": "box", "attention_query_rows": 0}
  keys = ("k", "first_prompt", "attention_query_rows")
  workdir_lib.refuse_changed_config(
      str(tmp_path), {"k": 3, "first_prompt": "box", "attention_query_rows": 0}, keys, implied)
  with pytest.raises(ValueError, match=r"attention_query_rows: 0 -> 16") as e:
    workdir_lib.refuse_changed_config(
        str(tmp_path), {"k": 3, "first_prompt": "box", "attention_query_rows": 16}, keys, implied)
  assert "first_prompt" not in str(e.value) and str(tmp_path) in str(e.value)
  with pytest.raises(ValueError, match=r"first_prompt: None -> 'box'"):  # nothing implied
    workdir_lib.refuse_changed_config(str(tmp_path), {"k": 3, "first_prompt": "box"},
                                      ("k", "first_prompt"))
