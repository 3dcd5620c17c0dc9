"""The latency benchmark runs end to end (tiny preset; timings not asserted)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_latency_benchmark_runs():
  run = subprocess.run(
      [sys.executable, "benchmarks/latency.py", "--preset=tiny", "--ks=1,3", "--repeats=1",
       "--size=61"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = run.stdout
  for row in ("| encode |", "| SAM (encode + decode + mask) |", "| SimSAM K=3 (fused) |",
              "simulate + decode K=3", "aggregate K=3", "compile: SimSAM K=1"):
    assert row in out, row
  assert "SimSAM K=3 / SAM (JAX):" in out
  assert "PyTorch SimSAM K=3 / SAM:" in out  # torch and transformers are test deps


def test_interactive_benchmark_runs():
  run = subprocess.run(
      [sys.executable, "benchmarks/interactive.py", "--preset=tiny", "--rounds=2", "--k=3",
       "--repeats=1", "--size=61", "--starts=box"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  for row in ("| SimSAM K=3 (encoder included) |", "| 2 rounds, box (encoder included) |",
              "| compile: 2 rounds, box |"):
    assert row in run.stdout, row
  assert "2 rounds box / SimSAM K=3:" in run.stdout
