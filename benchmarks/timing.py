"""The one timing loop of the benchmarks.

Every benchmark times a callable the same way: one first call (compilation,
warm-up, caches), then `repeats` calls, each blocking until its result is
ready; the median is what RESULTS.md reports.
"""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int) -> dict:
  """Times `fn()`, which must block until its work is done.

  Returns a dict: `first_s` (the first call, compilation included),
  `median_s`, and `times_s` (each of the `repeats` later calls).
  """
  if repeats < 1:
    raise ValueError(f"repeats must be at least 1, got {repeats}")
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"first_s": first, "median_s": statistics.median(times), "times_s": times}


def median_ms(fn, repeats: int) -> float:
  """Median wall time in ms of `fn()` after one warm-up call."""
  return timed(fn, repeats)["median_s"] * 1e3


def compile_ms(jitted, *args, **kwargs) -> float:
  """Wall time in ms of lowering and compiling `jitted` for these arguments."""
  start = time.perf_counter()
  jitted.lower(*args, **kwargs).compile()
  return (time.perf_counter() - start) * 1e3
