"""The benchmarks run end to end (tiny presets; timings never asserted)."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  run = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                       timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  return run.stdout


def test_latency_benchmark_runs():
  out = _run("benchmarks/latency.py", "--preset=tiny", "--ks=1,3", "--repeats=1", "--size=61",
             "--batch=2", "--torch_flows=authors,strong")
  for row in ("| encode |", "| SAM (encode + decode + mask) |", "| SimSAM K=3 (fused) |",
              "simulate + decode K=3", "aggregate K=3", "compile: SimSAM K=1",
              "| SimSAM K=3, batch 2 (per image) |", "authors ms", "strong ms"):
    assert row in out, row
  assert "SimSAM K=3 / SAM (JAX):" in out
  # torch and transformers are test dependencies: the PyTorch flows ran.
  assert "authors SimSAM K=3 / SAM:" in out and "strong SimSAM K=3 / SAM:" in out


def test_throughput_benchmark_runs_in_bfloat16():
  out = _run("benchmarks/throughput.py", "--preset=tiny", "--num_images=3", "--batch=2",
             "--ks=2", "--repeats=1", "--size=61", "--precision=bfloat16",
             "--torch_flows=authors")
  assert "precision bfloat16" in out
  row = next(line for line in out.splitlines() if line.startswith("| 2 |"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert len(cells) == 8, row  # K, img/s, batch ms, idle, 2 DSCs, authors img/s and ratio
  assert float(cells[1]) > 0 and float(cells[6]) > 0


def test_agreement_benchmark_runs():
  out = _run("benchmarks/agreement.py", "--preset=tiny", "--num_images=4", "--ks=2",
             "--size=61")
  row = next(line for line in out.splitlines() if line.startswith("| 2 |"))
  assert row.count("%") == 9, row


def test_gpu_script_steps_parse(tmp_path):
  """Every step of benchmarks/gpu.sh accepts its flags (the steps themselves run
  above at toy size; the whole script runs on the accelerator host)."""
  out_file = tmp_path / "results.md"
  run = subprocess.run(["bash", "benchmarks/gpu.sh", str(out_file)], cwd=REPO,
                       env={**os.environ, "CHECK_FLAGS": "1", "PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  text = out_file.read_text()
  assert "FAILED" not in text, text[-3000:]
  for heading in ("## latency ViT-B bfloat16", "## throughput ViT-B bfloat16, batch 16",
                  "## latency ViT-H float32", "## agreement bfloat16 vs float32"):
    assert heading in text, heading


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
