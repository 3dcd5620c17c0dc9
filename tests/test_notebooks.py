"""The notebooks run top to bottom (small preset, few clicks)."""

import json
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
OVERRIDES = {"CHECKPOINT": "random:tiny", "K": 4}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
  notebook = json.loads(path.read_text())
  namespace = {}
  ran = 0
  for cell in notebook["cells"]:
    if cell["cell_type"] != "code":
      continue
    source = "".join(line for line in cell["source"]
                     if not line.lstrip().startswith(("!", "%")))
    exec(compile(source, f"{path.name}[cell {ran}]", "exec"), namespace)
    ran += 1
    if "parameters" in cell["metadata"].get("tags", []):
      namespace.update(OVERRIDES)
  assert ran >= 3
  assert namespace["out"].mask.shape == namespace["image"].shape[:2]
