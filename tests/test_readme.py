r"""The README stays true: every shell command and Python block in it runs.

What is checked:

* Every command of the README's ```bash blocks (`\` continuations joined,
  comments dropped, `&&` chains split) is matched by `COVERAGE`, a table of
  (kind, regular expression); a command that no row matches fails
  `test_every_readme_command_is_covered`, which lists it. Each command is
  then run by `test_readme_command[...]` according to its kind:

  - `pip`: not re-run (the suite runs inside that install); the target must
    be `-e .` or `-e ".[EXTRA,...]"` with every EXTRA a key of setup.py's
    `extras_require` (read with `ast`).
  - `pytest`: not run recursively; the README line holding it must appear,
    character for character, as a line of `.ci/run`.
  - `demo`: run exactly as written, without overrides, in an empty folder
    with an empty HOME (the proof that the README's first command works on a
    fresh machine); it must write table.md (rows for sam and simsam),
    results.json, per_image.csv and PNGs in figures/, and say that the
    weights are random. The only test marked `slow`.
  - everything else runs AS WRITTEN through `bash -c` in a workspace folder,
    with `SMOKE_OVERRIDES[kind]` appended. The overrides only shrink the
    work: fewer clicks (`--k=4`, `--config.k=4`), one figure, one epoch.
    Before a command runs, the inputs it names are created where it expects
    them: tiny random SAM checkpoints (the `tiny` preset, built with
    tests/torch_reference.py) saved as the official `.pth` / Hugging Face
    folder / bare `model.safetensors` under the names the command uses,
    converted into `checkpoints/sam_vit_b` for the commands that load it
    (and, with `--profile=medsam`, into `checkpoints/medsam_vit_b`);
    `scan.nii.gz` and `slice.dcm` (built with nibabel and pydicom; a NIfTI
    `--out` is checked with nibabel against the scan's shape and affine);
    fake dataset trees (tests/data_fixtures.py) at the `--config.manual_dir`
    path under a HOME inside the test's tmp folder (so `~/data/busi`
    resolves there); `benign.png`; `configs` is a symlink to the repository's
    configs. Each command must exit 0 and write what the README says it
    writes.

* Every ```python block runs in the same workspace (`checkpoints/sam_vit_b`
  is then a converted tiny checkpoint, so the code runs unchanged). A block
  whose first line is `# NAME.py` is a file of the README's examples: it is
  written into the workspace before anything runs, must compile, and must be
  used by another block or command.

Speed: the commands run two at a time (module-scoped thread pool, one
subprocess per command; this machine has 2 cores), in README order with the
demo first, and share a persistent XLA compilation cache (with file locking)
except the demo, which runs with an empty environment as a user's would.
Each command gets its own HOME (its own `~/tensorflow_datasets`), except a
command that evaluates `runs/X/export/...`, which shares the HOME of the
README's fine-tuning command with `--workdir=runs/X` (and waits for it).
"""

from __future__ import annotations

import ast
import concurrent.futures
import csv
import dataclasses
import importlib.util
import json
import os
import pathlib
import py_compile
import re
import shlex
import site
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image

import data_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_SCRIPT = REPO / ".ci" / "run"
SETUP = REPO / "setup.py"
TIMEOUT_S = 600
WORKERS = 2
# benign.png of the workspace: (height, width); the README's boxes and points
# lie inside it.
IMAGE_SIZE = (300, 400)
DEMO_WORKDIR_FILES = ("table.md", "results.json", "per_image.csv")

# (kind, regular expression matched against the whole command).
COVERAGE: Tuple[Tuple[str, str], ...] = (
    ("pip", r"pip install\s.*"),
    ("pytest", r"python -m pytest(\s.*)?"),
    ("demo", r"python -m simsam_jax\.demo(\s.*)?"),
    ("make_splits", r"python -m simsam_jax\.data\.make_splits(\s.*)?"),
    ("convert", r"python -m simsam_jax\.convert\s.*"),
    ("segment", r"python -m simsam_jax\.segment\s.*"),
    ("finetune", r"python -m simsam_jax\.finetune\s.*"),
    ("evaluate", r"python (-m simsam_jax\.evaluate|my_evaluate\.py)\s.*"),
    ("interactive", r"python -m simsam_jax\.interactive\s.*"),
    ("export", r"python -m simsam_jax\.export\s.*"),
)

# Appended to a command of this kind; they only shrink the work.
SMOKE_OVERRIDES: Dict[str, str] = {
    "segment": "--k=4",  # SimSAM only (SAM takes no --k)
    "evaluate": "--config.k=4 --config.num_figures=1",
    "finetune": "--config.epochs=1",
    "interactive": "--config.num_rounds=2 --config.k=4 --config.num_figures=1",
    "export": "--k=4",
}

# Fake dataset trees, with cases in every split the commands read:
# BUSI paper437 train malignant_1-3, validation malignant_6, test
# malignant_10 and _31 (benign_5 and normal_3 are not among the 437);
# CVC-ClinicDB train 1 and 2, validation 8, test 3 and 11; ISIC-2016: the
# fixture's official Training and Test parts.
BUSI_CASES = {("malignant", 1): 0, ("malignant", 2): 1, ("malignant", 3): 0,
              ("malignant", 6): 0, ("malignant", 10): 0, ("malignant", 31): 0,
              ("benign", 5): 0, ("normal", 3): 0}
CVC_FRAMES = (1, 2, 3, 8, 11)
DATASET_TREES: Dict[str, Callable[[pathlib.Path], pathlib.Path]] = {
    "busi": lambda root: data_fixtures.make_busi_tree(root, BUSI_CASES),
    "cvc_clinicdb": lambda root: data_fixtures.make_cvc_tree(root, CVC_FRAMES),
    "isic2016": lambda root: data_fixtures.make_isic_tree(root),
    "nifti_folder": data_fixtures.make_nifti_tree,
}
# The README's medical inputs, written into the workspace: a CT-like volume
# (rows x columns of a slice along axis 2: 48 x 64) and a DICOM slice (60 x 80).
SCAN_SHAPE = (64, 48, 20)
DICOM_SIZE = (60, 80)


# ----------------------------------------------------------------------------
# Parsing the README.
# ----------------------------------------------------------------------------


def fenced_blocks(text: str, language: str) -> List[str]:
  """The contents of the ```LANGUAGE fenced blocks, in order."""
  blocks, current, inside = [], [], None
  for line in text.splitlines():
    if line.startswith("```"):
      if inside is None:
        inside = line[3:].strip()
        current = []
      else:
        if inside == language:
          blocks.append("\n".join(current))
        inside = None
      continue
    if inside is not None:
      current.append(line)
  if inside is not None:
    raise ValueError("README.md: unterminated ``` block")
  return blocks


def _unquoted_positions(text: str):
  """Yields (index, char) of the characters outside quotes and escapes."""
  quote, escaped = None, False
  for i, ch in enumerate(text):
    if escaped:
      escaped = False
    elif ch == "\\" and quote != "'":
      escaped = True
    elif quote:
      if ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    else:
      yield i, ch


def strip_comment(line: str) -> str:
  """`line` without a shell comment (`#` at the start or after a blank)."""
  for i, ch in _unquoted_positions(line):
    if ch == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i].rstrip()
  return line


def split_and(line: str) -> List[str]:
  """Splits a `a && b` chain outside quotes; parts stripped."""
  cuts = [i for i, ch in _unquoted_positions(line)
          if ch == "&" and line[i:i + 2] == "&&"]
  parts, start = [], 0
  for cut in cuts:
    if cut < start:
      continue
    parts.append(line[start:cut])
    start = cut + 2
  parts.append(line[start:])
  return [part.strip() for part in parts if part.strip()]


def logical_lines(block: str) -> List[str]:
  """Lines of a shell block with `\\` continuations joined, comments and
  blank lines dropped, runs of blanks collapsed to one space."""
  lines, pending = [], []
  for raw in block.splitlines():
    line = raw.rstrip()
    if line.endswith("\\"):
      pending.append(line[:-1].strip())
      continue
    pending.append(line.strip())
    joined = strip_comment(" ".join(part for part in pending if part)).strip()
    pending = []
    if joined:
      lines.append(joined)
  if pending:
    raise ValueError(f"a `\\` continuation ends the block:\n{block}")
  return lines


def readme_lines(text: Optional[str] = None) -> List[str]:
  """Every logical line of the README's bash blocks, in order."""
  text = README.read_text() if text is None else text
  return [line for block in fenced_blocks(text, "bash")
          for line in logical_lines(block)]


def readme_commands(text: Optional[str] = None) -> List[str]:
  """Every command (`&&` chains split) of the README's bash blocks, in order
  of first appearance, without duplicates."""
  seen: Dict[str, None] = {}
  for line in readme_lines(text):
    for command in split_and(line):
      seen.setdefault(command, None)
  return list(seen)


_FILE_BLOCK = re.compile(r"#\s*([\w.-]+\.py)\s*$")


def file_block_name(code: str) -> Optional[str]:
  """`NAME.py` when the block's first line is `# NAME.py`, else None."""
  first = code.lstrip("\n").split("\n", 1)[0]
  match = _FILE_BLOCK.fullmatch(first.strip())
  return match.group(1) if match else None


def kind_of(command: str) -> Optional[str]:
  """The COVERAGE kind of a command, or None."""
  for kind, pattern in COVERAGE:
    if re.fullmatch(pattern, command):
      return kind
  return None


def parse_flags(command: str) -> Dict[str, object]:
  """`--name=value` -> {name: value}; `--name` -> {name: True} (last wins)."""
  flags: Dict[str, object] = {}
  for token in shlex.split(command):
    if token.startswith("--"):
      name, sep, value = token[2:].partition("=")
      flags[name] = value if sep else True
  return flags


def config_spec(flag: str) -> Tuple[str, str]:
  """`configs/x.py:arg` -> ("configs/x.py", "arg")."""
  path, _, arg = flag.partition(":")
  return path, arg


def load_config(path: pathlib.Path, arg: str):
  spec = importlib.util.spec_from_file_location(
      "readme_cfg_" + re.sub(r"\W", "_", str(path)), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


README_TEXT = README.read_text()
COMMANDS = readme_commands(README_TEXT)
PYTHON_BLOCKS = fenced_blocks(README_TEXT, "python")


# ----------------------------------------------------------------------------
# The workspace and the jobs.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
  """A finished command: its text, HOME, exit status and output."""
  command: str
  home: pathlib.Path
  cwd: pathlib.Path
  returncode: int
  stdout: str
  stderr: str

  def check(self) -> "Result":
    assert self.returncode == 0, (
        f"`{self.command}` exited with {self.returncode}\n--- stdout (tail):\n"
        f"{self.stdout[-3000:]}\n--- stderr (tail):\n{self.stderr[-5000:]}")
    return self


class Workspace:
  """A folder standing in for the user's machine, and the job pool."""

  def __init__(self, root: pathlib.Path, sources: Dict[str, pathlib.Path]):
    self.root = root
    self.cwd = root / "work"
    self.sources = sources
    self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
    self._lock = threading.Lock()
    self._futures: Dict[object, concurrent.futures.Future] = {}
    self._folders = 0

  def new_folder(self, parent: str, name: str) -> pathlib.Path:
    """A new empty folder `root/parent/NN_name` (thread-safe numbering)."""
    slug = re.sub(r"\W+", "_", name)[:40]
    with self._lock:
      self._folders += 1
      folder = self.root / parent / f"{self._folders:02d}_{slug}"
    folder.mkdir(parents=True)
    return folder

  def new_home(self, name: str) -> pathlib.Path:
    return self.new_folder("homes", name)

  def env(self, home: pathlib.Path, compilation_cache: bool = True) -> Dict[str, str]:
    env = dict(os.environ)
    env["HOME"] = str(home)
    # `python` in a command is this interpreter, and HOME no longer hides its
    # user site-packages.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUSERBASE"] = site.getuserbase()
    if compilation_cache:
      # The run's XLA compilation cache (conftest.py: folder, size limit and
      # so file lock, inherited), here for every program however quick.
      env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    else:
      for name in list(env):
        if name.startswith("JAX_COMPILATION_CACHE") or name.startswith("JAX_PERSISTENT_CACHE"):
          del env[name]
    return env

  def run(self, command: str, home: pathlib.Path, cwd: Optional[pathlib.Path] = None,
          overrides: str = "", compilation_cache: bool = True) -> Result:
    """Runs `command` (+ overrides) through bash; never raises on failure."""
    cwd = self.cwd if cwd is None else cwd
    text = f"{command} {overrides}".strip()
    try:
      done = subprocess.run(["bash", "-c", text], cwd=cwd,
                            env=self.env(home, compilation_cache),
                            capture_output=True, text=True, timeout=TIMEOUT_S)
      return Result(text, home, cwd, done.returncode, done.stdout, done.stderr)
    except subprocess.TimeoutExpired as e:
      return Result(text, home, cwd, -1, _text(e.stdout),
                    _text(e.stderr) + f"\n(timed out after {TIMEOUT_S} s)")

  def submit(self, key, fn: Callable[[], object]) -> concurrent.futures.Future:
    """Runs `fn` once per `key` in the pool; the same future afterwards."""
    with self._lock:
      if key not in self._futures:
        self._futures[key] = self.pool.submit(fn)
      return self._futures[key]

  def once(self, key, fn: Callable[[], object]):
    """`fn()` once per key, computed in the calling thread if not started.

    Used for dependencies (a fine-tuning run that an evaluation needs), so a
    worker never waits on a job queued behind it.
    """
    with self._lock:
      future = self._futures.get(key)
      owner = future is None
      if owner:
        future = concurrent.futures.Future()
        self._futures[key] = future
    if owner:
      try:
        future.set_result(fn())
      except BaseException as e:  # noqa: BLE001 (re-raised to every waiter)
        future.set_exception(e)
    return future.result()


def _text(data) -> str:
  if data is None:
    return ""
  return data.decode(errors="replace") if isinstance(data, bytes) else data


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  """The workspace: checkpoints/sam_vit_b, benign.png, configs, README files."""
  import torch_reference as tr
  from simsam_jax.checkpoint import convert_checkpoint
  from simsam_jax.modeling import get_preset

  root = tmp_path_factory.mktemp("readme")
  sources_dir = root / "sources"
  sources_dir.mkdir()
  official, hf = tr.paired_models(get_preset("tiny"), seed=0)
  pth = pathlib.Path(tr.save_official_pth(official, str(sources_dir / "sam_tiny.pth")))
  folder = sources_dir / "hf_tiny"
  tr.save_hf_folder(hf, str(folder))
  ws = Workspace(root, {"pth": pth, "hf_folder": folder})

  cwd = ws.cwd
  cwd.mkdir()
  (cwd / "configs").symlink_to(REPO / "configs", target_is_directory=True)
  convert_checkpoint(str(pth), str(cwd / "checkpoints" / "sam_vit_b"))
  convert_checkpoint(str(pth), str(cwd / "checkpoints" / "medsam_vit_b"), profile="medsam")
  write_medical_inputs(cwd)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, IMAGE_SIZE + (3,), dtype=np.uint8)).save(
      cwd / "benign.png")
  for code in PYTHON_BLOCKS:
    name = file_block_name(code)
    if name:
      (cwd / name).write_text(code.lstrip("\n") + "\n")
  yield ws
  ws.pool.shutdown(wait=True, cancel_futures=True)


def write_medical_inputs(cwd: pathlib.Path) -> None:
  """scan.nii.gz (Hounsfield-like int16, rotated anisotropic affine) and
  slice.dcm (CT, RescaleSlope/Intercept, PixelSpacing), built with nibabel and
  pydicom."""
  import nibabel as nib
  rng = np.random.default_rng(5)
  volume = rng.normal(0, 60, SCAN_SHAPE).astype(np.int16)
  volume[20:38, 14:28, 8:16] += 180
  affine = np.array([[0, -0.9, 0, 40.0], [0.8, 0, 0, -20.0], [0, 0, 2.5, 10.0], [0, 0, 0, 1]])
  nib.save(nib.Nifti1Image(volume, affine), cwd / "scan.nii.gz")
  stored = rng.integers(900, 1300, DICOM_SIZE).astype(np.int16)
  stored[18:38, 22:48] += 300
  data_fixtures.write_dicom(cwd / "slice.dcm", stored, slope=1.0, intercept=-1024.0,
                            spacing=(0.7, 0.7))


def _job(ws: Workspace, command: str) -> Callable[[], object]:
  kind = kind_of(command)
  handler = HANDLERS.get(kind)
  if handler is None:
    raise AssertionError(f"no way to run `{command}` (kind {kind})")
  return lambda: handler(ws, command)


@pytest.fixture(scope="module", autouse=True)
def started_jobs(request, workspace):
  """Starts every selected command and block of this module at set-up.

  The demo (the longest) goes first, then README order; results are
  collected by the tests.
  """
  selected_commands, selected_blocks = [], []
  for item in request.session.items:
    if getattr(item.module, "__file__", None) != __file__ or not hasattr(item, "callspec"):
      continue
    params = item.callspec.params
    if "command" in params and kind_of(params["command"]) in HANDLERS:
      selected_commands.append(params["command"])
    if "block" in params and file_block_name(PYTHON_BLOCKS[params["block"]]) is None:
      selected_blocks.append(params["block"])
  selected_commands.sort(key=lambda c: (kind_of(c) != "demo", COMMANDS.index(c)))
  for command in selected_commands:
    workspace.submit(("command", command), _job(workspace, command))
  for index in selected_blocks:
    workspace.submit(("block", index), lambda i=index: run_python_block(workspace, i))
  yield


# ----------------------------------------------------------------------------
# Handlers, one per kind: run the command, check what it wrote.
# ----------------------------------------------------------------------------


def _in(base: pathlib.Path, home: pathlib.Path, path: str) -> pathlib.Path:
  """A path of a command: `~` is `home`, relative paths are under `base`."""
  if path == "~" or path.startswith("~/"):
    return home / path[2:]
  return base / path


def run_demo(ws: Workspace, command: str) -> Result:
  """As written, no overrides, empty folder, empty HOME, no shared cache."""
  cwd = ws.root / "demo"
  cwd.mkdir()
  home = ws.new_home("demo")
  result = ws.run(command, home, cwd=cwd, compilation_cache=False).check()
  workdir = _in(cwd, home, str(parse_flags(command)["workdir"]))
  for name in DEMO_WORKDIR_FILES:
    assert (workdir / name).is_file(), f"the demo wrote no {name} in {workdir}"
  table = (workdir / "table.md").read_text()
  for method in ("sam", "simsam"):
    assert f"| {method} |" in table, table
  results = json.loads((workdir / "results.json").read_text())
  assert {"sam", "simsam"} <= set(results["methods"]), results["methods"]
  with open(workdir / "per_image.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert rows and {"sam", "simsam"} <= {row["method"] for row in rows}
  assert sorted((workdir / "figures").glob("*.png")), "no figure written"
  said = result.stdout + result.stderr
  assert re.search(r"phantoms only", said, re.I), (
      f"the demo does not say that its model knows phantoms only:\n{said[-3000:]}")
  sam_dsc = [float(row["dsc"]) for row in rows if row["method"] == "sam"]
  assert sum(sam_dsc) / len(sam_dsc) >= 0.8, "the demo's model does not segment phantoms"
  assert "--config.checkpoint=checkpoints/sam_vit_b" in said, (
      f"the demo does not print the command for a real checkpoint:\n{said[-3000:]}")
  return result


def run_make_splits(ws: Workspace, command: str) -> Result:
  return ws.run(command, ws.new_home("make_splits")).check()


def run_convert(ws: Workspace, command: str) -> Result:
  """In a fresh folder holding the source under the name the command uses."""
  import shutil
  from simsam_jax.checkpoint import read_sidecar
  flags = parse_flags(command)
  cwd = ws.new_folder("convert", str(flags["dst"]))
  home = ws.new_home("convert")
  src = _in(cwd, home, str(flags["src"]))
  src.parent.mkdir(parents=True, exist_ok=True)
  if src.suffix == ".pth":
    shutil.copy(ws.sources["pth"], src)
    expected = "official_pth"
  elif src.name.endswith(".safetensors"):
    shutil.copytree(ws.sources["hf_folder"], src.parent, dirs_exist_ok=True)
    expected = "hf_safetensors"
  else:
    shutil.copytree(ws.sources["hf_folder"], src)
    expected = "hf_folder"
  assert src.exists()
  result = ws.run(command, home, cwd=cwd).check()
  dst = _in(cwd, home, str(flags["dst"]))
  sidecar = read_sidecar(str(dst))
  assert sidecar["source"]["format"] == expected, sidecar["source"]
  assert sidecar["preset"] == "tiny"
  assert sidecar["profile"] == flags.get("profile", "sam")
  assert (dst / "params").is_dir()
  assert f"Converted {expected}" in result.stdout, result.stdout
  return result


def run_segment(ws: Workspace, command: str) -> Result:
  from simsam_jax import outputs as outputs_lib
  from simsam_jax import segment as segment_lib
  flags = parse_flags(command)
  method = flags.get("method", segment_lib.DEFAULT_METHOD)
  home = ws.new_home("segment")
  overrides = SMOKE_OVERRIDES["segment"] if method == "simsam" else ""
  result = ws.run(command, home, overrides=overrides).check()
  cwd = ws.cwd
  out = _in(cwd, home, str(flags["out"]))
  metadata = json.loads(pathlib.Path(outputs_lib.metadata_path(str(out))).read_text())
  assert metadata["method"] == method
  image = str(flags["image"])
  if outputs_lib.is_nifti_path(str(out)):  # a volume of the input's geometry
    import nibabel as nib
    volume, scan = nib.load(out), nib.load(_in(cwd, home, image))
    assert volume.shape == scan.shape
    np.testing.assert_allclose(volume.affine, scan.affine)
    data = np.asarray(volume.dataobj)
    k = int(flags["slice"])
    assert data.sum() == data[:, :, k].sum() > 0
    mask = data[:, :, k].T.astype(np.uint8) * 255
  else:
    mask = np.asarray(Image.open(out))
  assert mask.dtype == np.uint8 and mask.ndim == 2
  assert set(np.unique(mask)) <= {0, 255}
  assert mask.shape == (metadata["image"]["height"], metadata["image"]["width"])
  if "intensity" in flags:
    assert metadata["image"]["intensity"] == flags["intensity"]
  if "profile" in flags or "medsam" in str(flags["checkpoint"]):
    assert metadata["checkpoint"]["profile"] == flags.get("profile", "medsam")
  if not image.startswith("synthetic"):
    from simsam_jax import processing
    pixels = processing.read_image(_in(cwd, home, image),
                                   slice_index=flags.get("slice") and int(flags["slice"]))
    assert mask.shape == pixels.pixels.shape[:2]
  if "overlay" in flags:
    overlay = Image.open(_in(cwd, home, str(flags["overlay"])))
    assert overlay.size == (mask.shape[1], mask.shape[0])
  if "save_logits" in flags:
    logits = np.load(_in(cwd, home, str(flags["save_logits"])))
    assert logits.dtype == np.float32 and logits.ndim == 3
  if "agreement" in flags:
    agreement = Image.open(_in(cwd, home, str(flags["agreement"])))
    assert agreement.width > mask.shape[1]  # the map and its colour bar
  if "save_debug" in flags:
    with np.load(_in(cwd, home, str(flags["save_debug"]))) as debug:
      assert set(outputs_lib.DEBUG_KEYS) <= set(debug.files), debug.files
      assert debug["clicks"].shape == (4, 2)
  if "multimask" in flags:
    assert len(metadata["iou_predictions"]) == 3
  return result


def _dataset_home(ws: Workspace, command: str, dataset: str, manual_dir: str) -> pathlib.Path:
  """A fresh HOME with the fake `dataset` tree at `manual_dir`."""
  if dataset not in DATASET_TREES:
    raise AssertionError(f"`{command}`: no fake tree for dataset {dataset!r}")
  home = ws.new_home(dataset)
  path = _in(ws.cwd, home, manual_dir)
  assert home in path.parents, f"`{command}`: --config.manual_dir must be under ~"
  DATASET_TREES[dataset](path)
  return home


def run_finetune(ws: Workspace, command: str) -> Result:
  flags = parse_flags(command)
  path, arg = config_spec(str(flags["config"]))
  config = load_config(ws.cwd / path, arg)
  home = _dataset_home(ws, command, config.dataset, str(flags["config.manual_dir"]))
  result = ws.run(command, home, overrides=SMOKE_OVERRIDES["finetune"]).check()
  from simsam_jax.checkpoint import read_sidecar
  workdir = _in(ws.cwd, home, str(flags["workdir"]))
  for name in ("last", "best"):
    read_sidecar(str(workdir / "export" / name))  # an ordinary checkpoint
  history = json.loads((workdir / "history.json").read_text())
  assert history, "empty history.json"
  assert any((workdir / "tensorboard").iterdir()), "no TensorBoard events"
  assert "exported" in result.stdout
  return result


def finetune_for(ws: Workspace, workdir: str) -> Result:
  """The README's fine-tuning command with `--workdir=workdir`, run once."""
  commands = [c for c in COMMANDS if kind_of(c) == "finetune"
              and parse_flags(c).get("workdir") == workdir]
  assert commands, f"no README fine-tuning command has --workdir={workdir}"
  return ws.once(("finetune", workdir), lambda: run_finetune(ws, commands[0]))


def run_evaluate(ws: Workspace, command: str) -> Result:
  """Once per workdir (a later command may read it, see review_workdir)."""
  return ws.once(("evaluate", parse_flags(command)["workdir"]),
                 lambda: _run_evaluate(ws, command))


def _run_evaluate(ws: Workspace, command: str) -> Result:
  flags = parse_flags(command)
  if "config.review_workdir" in flags:  # the validation run comes first
    sources = [c for c in COMMANDS if kind_of(c) == "evaluate"
               and parse_flags(c).get("workdir") == flags["config.review_workdir"]]
    assert sources, f"no README evaluation writes {flags['config.review_workdir']}"
    run_evaluate(ws, sources[0])
  path, arg = config_spec(str(flags["config"]))
  config = load_config(ws.cwd / path, arg)
  config.split = str(flags.get("config.split", config.split))
  methods = [m for m in str(flags.get("config.methods", config.methods)).split(",") if m]
  checkpoint = str(flags.get("config.checkpoint", config.checkpoint))
  exported = re.fullmatch(r"(.+)/export/(last|best)", checkpoint)
  if "config.manual_dir" in flags:
    home = _dataset_home(ws, command, config.dataset, str(flags["config.manual_dir"]))
  elif exported:  # the dataset was built by the fine-tuning run
    home = finetune_for(ws, exported.group(1)).home
  else:
    raise AssertionError(f"`{command}` has no --config.manual_dir: nothing would "
                         "build the dataset")
  if checkpoint.startswith("random:"):
    pass
  elif exported:
    assert (ws.cwd / checkpoint / "simsam_jax.json").is_file()
  else:
    assert (ws.cwd / checkpoint).is_dir(), f"unexpected checkpoint {checkpoint}"
  if "config.num_shards" in flags:
    return ws.once(("shards", flags["workdir"]),
                   lambda: run_evaluate_shards(ws, str(flags["workdir"]), home))
  result = ws.run(command, home, overrides=SMOKE_OVERRIDES["evaluate"]).check()
  workdir = _in(ws.cwd, home, str(flags["workdir"]))
  check_evaluation(workdir, config, methods, checkpoint)
  assert (workdir / "table.md").read_text().strip() in result.stdout  # printed at the end
  if "config.review_workdir" in flags:
    review = json.loads((workdir / "results.json").read_text())["uncertainty"]["review"]
    assert review["threshold"] is not None and (workdir / "review.csv").is_file()
  return result


def run_interactive(ws: Workspace, command: str) -> Result:
  """The click protocol; a dataset tree when the command names one."""
  flags = parse_flags(command)
  path, arg = config_spec(str(flags["config"]))
  config = load_config(ws.cwd / path, arg)
  if "config.manual_dir" in flags:
    home = _dataset_home(ws, command, config.dataset, str(flags["config.manual_dir"]))
  else:
    assert config.dataset == "phantom", f"`{command}` has no --config.manual_dir"
    home = ws.new_home("interactive")
  result = ws.run(command, home, overrides=SMOKE_OVERRIDES["interactive"]).check()
  workdir = _in(ws.cwd, home, str(flags["workdir"]))
  noc = json.loads((workdir / "noc.json").read_text())
  assert noc["num_rounds"] == 2 and noc["num_images"] >= 1
  with open(workdir / "clicks.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == noc["num_images"] * len(noc["starts"]) * 3
  assert (workdir / "figures" / "miou_vs_clicks.png").is_file()
  assert (workdir / "table.md").read_text().strip() in result.stdout
  return result


def run_evaluate_shards(ws: Workspace, workdir: str, home: pathlib.Path) -> Result:
  """All README shard commands of `workdir`, concurrently, sharing one HOME
  (so one data_dir, which they build at the same time) like the machines of
  a cluster sharing storage; then the merged outputs are checked."""
  commands = [c for c in COMMANDS if kind_of(c) == "evaluate"
              and parse_flags(c).get("workdir") == workdir]
  flags = [parse_flags(c) for c in commands]
  num = {int(f["config.num_shards"]) for f in flags}
  assert len(num) == 1, f"shard commands of {workdir} disagree on num_shards: {num}"
  assert sorted(int(f["config.shard_index"]) for f in flags) == list(range(num.pop())), (
      f"the README's shard commands of {workdir} do not cover every shard once")
  with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
    results = list(pool.map(
        lambda c: ws.run(c, home, overrides=SMOKE_OVERRIDES["evaluate"]).check(), commands))
  path, arg = config_spec(str(flags[0]["config"]))
  config = load_config(ws.cwd / path, arg)
  methods = [m for m in str(flags[0].get("config.methods", config.methods)).split(",") if m]
  folder = _in(ws.cwd, home, workdir)
  check_evaluation(folder, config, methods, str(flags[0]["config.checkpoint"]))
  assert len(list((folder / "shards").glob("*.csv"))) == len(commands)
  table = (folder / "table.md").read_text().strip()
  assert any(table in r.stdout for r in results), "no shard printed the final table"
  for r in results:
    assert table in r.stdout or "done" in r.stdout, r.stdout[-2000:]
  return results[0]


def check_evaluation(workdir: pathlib.Path, config, methods: List[str],
                     checkpoint: str) -> None:
  """The outputs the README promises for an evaluation workdir."""
  table = (workdir / "table.md").read_text()
  for method in methods:
    assert f"| {method} |" in table, (method, table)
  results = json.loads((workdir / "results.json").read_text())
  assert results["methods"] == methods
  assert results["dataset"] == config.dataset and results["split"] == config.split
  assert results["checkpoint"]["spec"] == checkpoint
  assert results["num_images"] >= 1
  with open(workdir / "per_image.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == results["num_images"] * len(methods)
  figures = sorted((workdir / "figures").glob("*.png")) if "simsam" in methods else []
  assert len(figures) == (1 if "simsam" in methods else 0)


def run_export(ws: Workspace, command: str) -> Result:
  """The exported file loads and runs on an image of its size."""
  from simsam_jax import export
  flags = parse_flags(command)
  home = ws.new_home("export")
  result = ws.run(command, home, overrides=SMOKE_OVERRIDES["export"]).check()
  h, w = (int(v) for v in str(flags["image_size"]).split(","))
  out = export.load(str(_in(ws.cwd, home, str(flags["out"]))))(
      np.zeros((h, w, 3), np.uint8), np.array([10, 10, w // 2, h // 2], np.float32))
  assert out["mask"].shape == (h, w) and out["agreement"].shape == (h, w)
  return result


HANDLERS: Dict[str, Callable[[Workspace, str], Result]] = {
    "demo": run_demo,
    "make_splits": run_make_splits,
    "convert": run_convert,
    "segment": run_segment,
    "finetune": lambda ws, command: finetune_for(ws, str(parse_flags(command)["workdir"])),
    "evaluate": run_evaluate,
    "interactive": run_interactive,
    "export": run_export,
}


def run_python_block(ws: Workspace, index: int) -> Result:
  code = PYTHON_BLOCKS[index]
  home = ws.new_home(f"python_{index}")
  # `python -c`: the block runs from the workspace (which is on sys.path, so
  # it can import the README's file blocks), as if typed there.
  return ws.run(f"python -c {shlex.quote(code)}", home).check()


# ----------------------------------------------------------------------------
# Static checks: pip targets, CI, coverage, the parser itself.
# ----------------------------------------------------------------------------


def setup_extras() -> set:
  """Keys of `extras_require` in setup.py's `setuptools.setup(...)` call."""
  tree = ast.parse(SETUP.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "setup":
      for keyword in node.keywords:
        if keyword.arg == "extras_require":
          assert isinstance(keyword.value, ast.Dict), "extras_require is not a dict literal"
          return {ast.literal_eval(key) for key in keyword.value.keys}
  return set()


def check_pip(command: str) -> None:
  tokens = shlex.split(command)
  assert tokens[:2] == ["pip", "install"], command
  args = tokens[2:]
  assert len(args) == 2 and args[0] == "-e", (
      f"`{command}`: expected `pip install -e .` or `pip install -e \".[EXTRA]\"`")
  match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", args[1])
  assert match, f"`{command}`: the target must be . or .[EXTRA,...]"
  extras = set(match.group(1).split(",")) if match.group(1) else set()
  unknown = extras - setup_extras()
  assert not unknown, f"`{command}`: extras {sorted(unknown)} are not in setup.py"


def check_pytest(command: str) -> None:
  lines = [line for line in readme_lines(README_TEXT) if command in split_and(line)]
  ci = {line.strip() for line in CI_SCRIPT.read_text().splitlines()}
  assert lines and all(line in ci for line in lines), (
      f"{CI_SCRIPT} does not run the README's test command exactly: {lines}")


def _command_id(command: str) -> str:
  index = COMMANDS.index(command)
  kind = kind_of(command) or "UNCOVERED"
  words = re.findall(r"--(?:config=configs/|src=|image=|method=)([\w.:-]+)", command)
  return f"{index:02d}-{kind}" + (f"-{words[0]}" if words else "")


def _command_params():
  for command in COMMANDS:
    marks = [pytest.mark.slow] if kind_of(command) == "demo" else []
    yield pytest.param(command, id=_command_id(command), marks=marks)


def test_readme_has_commands_and_blocks():
  kinds = [kind_of(command) for command in COMMANDS]
  for kind in ("pip", "pytest", "demo", "convert", "segment", "evaluate", "finetune"):
    assert kind in kinds, f"README.md has no {kind} command"
  assert PYTHON_BLOCKS, "README.md has no python block"


def test_every_readme_command_is_covered():
  uncovered = [command for command in COMMANDS if kind_of(command) is None]
  assert not uncovered, ("README commands that no test runs (add a COVERAGE row "
                         "and a handler in tests/test_readme.py):\n  "
                         + "\n  ".join(uncovered))


def test_first_command_is_the_demo():
  first = readme_lines(README_TEXT)[0]
  assert first == "pip install -e . && python -m simsam_jax.demo --workdir=runs/demo", first


@pytest.mark.parametrize("command", list(_command_params()))
def test_readme_command(command, workspace):
  kind = kind_of(command)
  assert kind is not None, f"uncovered README command: {command}"
  if kind == "pip":
    check_pip(command)
  elif kind == "pytest":
    check_pytest(command)
  else:
    workspace.submit(("command", command), _job(workspace, command)).result()


@pytest.mark.parametrize("block", range(len(PYTHON_BLOCKS)))
def test_readme_python_block(block, workspace):
  code = PYTHON_BLOCKS[block]
  name = file_block_name(code)
  if name is None:
    workspace.submit(("block", block), lambda: run_python_block(workspace, block)).result()
    return
  py_compile.compile(str(workspace.cwd / name), doraise=True)
  module = name[:-3]
  users = [c for c in COMMANDS if re.search(rf"\b{re.escape(name)}\b", c)]
  users += [b for b in PYTHON_BLOCKS if b is not code
            and re.search(rf"^\s*(import|from)\s+{re.escape(module)}\b", b, re.M)]
  assert users, f"README file {name} is used by no other block or command"


def test_parser():
  text = "\n".join([
      "intro", "```bash", "# a comment", "pip install -e '.[a]' && python -m x --y=1 \\",
      "    --z='# not a comment'  # a comment", "", "python -m x --y=1 \\",
      "    --z='# not a comment'", "```", "```python", "# f.py", "x = 1", "```",
      "```", "not bash", "```"])
  assert readme_lines(text) == [
      "pip install -e '.[a]' && python -m x --y=1 --z='# not a comment'",
      "python -m x --y=1 --z='# not a comment'"]
  assert readme_commands(text) == ["pip install -e '.[a]'",
                                   "python -m x --y=1 --z='# not a comment'"]
  assert fenced_blocks(text, "python") == ["# f.py\nx = 1"]
  assert file_block_name("# f.py\nx = 1") == "f.py"
  assert file_block_name("import f\n") is None
  assert split_and("a 'b && c' && d") == ["a 'b && c'", "d"]
  assert parse_flags("python -m x --a=1 --b --c='d e'") == {"a": "1", "b": True, "c": "d e"}
  with pytest.raises(AssertionError):
    check_pip("pip install -e '.[nope]'")
  check_pip("pip install -e .")
  check_pip('pip install -e ".[test]"')
