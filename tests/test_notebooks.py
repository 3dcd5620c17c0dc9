"""Every notebook in notebooks/ runs top to bottom under papermill.

Each notebook is executed in a real `python3` kernel with its smoke
parameters injected after its `parameters` cell. The kernel runs on the CPU
with 4 forced host devices (`XLA_FLAGS`), so the sharded batch of
`simsam_colab.ipynb` really splits over 4 devices. A cell that raises fails
the test with papermill's error; the executed notebook is then checked for
what the run must have produced.
"""

import json
import pathlib
import re

import nbformat
import papermill
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
NUM_DEVICES = 4


def smoke_parameters(name: str, tmp_path: pathlib.Path) -> dict:
  """Small, download-free settings for each notebook."""
  if name == "simsam_colab.ipynb":
    return {"SMOKE": True, "WORKDIR": str(tmp_path / "workdir"), "K": 8,
            "BATCH_PER_DEVICE": 1}
  if name == "quickstart.ipynb":
    return {"CHECKPOINT": "random:tiny", "K": 4}
  raise AssertionError(f"notebooks/{name} has no smoke parameters in {__file__}")


def stdout_of(notebook) -> str:
  return "".join(output.get("text", "") for cell in notebook.cells
                 if cell.cell_type == "code" for output in cell.get("outputs", [])
                 if output.output_type == "stream" and output.name == "stdout")


def images_of(notebook) -> int:
  return sum("image/png" in output.get("data", {}) for cell in notebook.cells
             if cell.cell_type == "code" for output in cell.get("outputs", []))


def check_quickstart(notebook, text, tmp_path):
  del notebook, tmp_path
  assert re.search(r"chosen candidate \d+ of 4\b", text), text
  for variant in ("paper", "random clicks", "pixel mean", "K = 1", "oracle clicks"):
    assert re.search(rf"^{variant} +foreground [\d.]+ confidence [\d.]+ IoU with ground truth "
                     r"[\d.]+$", text, re.M), (variant, text)


def check_simsam_colab(notebook, text, tmp_path):
  del notebook
  workdir = tmp_path / "workdir"
  assert "RANDOM WEIGHTS (random:tiny_1024)" in text
  assert f"device count: {NUM_DEVICES}" in text, text
  # Section 5: SAM vs SimSAM on a phantom, scored against its ground truth.
  assert re.search(r"chosen candidate \d+ of 8 ", text), text
  assert re.search(r"^SimSAM +vs ground truth: IoU [\d.]+", text, re.M), text
  for plot in ("sam_vs_simsam.png", "candidates.png"):
    assert (workdir / "plots" / plot).stat().st_size > 0
  # Section 6: the phantom evaluation wrote its report.
  eval_dir = workdir / "eval_phantom"
  table = (eval_dir / "table.md").read_text()
  for method in ("sam", "simsam", "random", "pixel_mean", "k1"):
    assert f"| {method} |" in table
  results = json.loads((eval_dir / "results.json").read_text())
  assert results["dataset"] == "phantom" and results["num_images"] > 0
  assert results["checkpoint"]["random_weights"] is True
  assert list((eval_dir / "figures").glob("*.png"))
  # Section 7: the batch was sharded over every device and matched per-image runs.
  assert f"{NUM_DEVICES} devices (cpu)" in text, text
  assert f"on {NUM_DEVICES} devices" in text and "spec=P('data',)" in text, text
  assert "masks and choices identical: True" in text, text
  assert f"same chosen candidate {NUM_DEVICES}/{NUM_DEVICES}" in text, text
  assert re.search(rf"sharded run_batch on {NUM_DEVICES} devices: [\d.]+ images/s", text), text


CHECKS = {"quickstart.ipynb": check_quickstart, "simsam_colab.ipynb": check_simsam_colab}


def test_every_notebook_is_checked():
  assert NOTEBOOKS, "no notebooks found"
  assert sorted(CHECKS) == sorted(p.name for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
  source = nbformat.read(path, as_version=4)
  nbformat.validate(source)
  assert source.metadata.kernelspec.name == "python3"
  assert any("parameters" in cell.metadata.get("tags", []) for cell in source.cells)
  assert not any(cell.get("outputs") or cell.get("execution_count")
                 for cell in source.cells if cell.cell_type == "code"), "clear the outputs"

  # The kernel is a subprocess: it inherits these.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={NUM_DEVICES}")
  output = tmp_path / path.name
  papermill.execute_notebook(
      str(path), str(output), parameters=smoke_parameters(path.name, tmp_path),
      kernel_name="python3", cwd=str(tmp_path), progress_bar=False)

  executed = nbformat.read(output, as_version=4)
  injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
  assert len(injected) == 1
  assert not any(out.output_type == "error" for cell in executed.cells
                 if cell.cell_type == "code" for out in cell.get("outputs", []))
  assert images_of(executed) >= 1
  CHECKS[path.name](executed, stdout_of(executed), tmp_path)
