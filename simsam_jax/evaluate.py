r"""Evaluates SAM, SimSAM and ablations on a dataset: Table 1 in one command.

  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=runs/busi
  python -m simsam_jax.evaluate --config=configs/eval.py:busi --workdir=runs/busi \
      --config.data_dir=~/tensorflow_datasets --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b --config.methods=sam,simsam,random,pixel_mean,k1

Images go through `simsam_jax.evaluation.runner` `config.batch_size` at a
time (default 0: 8 per local device on GPU/TPU, 1 per device on CPU): ONE
compiled program per batch encodes the images once and runs SAM and every
requested method on the embeddings (vmapped over images, sharded over the
local devices), with DSC and IoU on the device; only masks and scalars come
back. Meanwhile `grain` threads prepare the next images and a thread pool
computes NSD and writes rows, masks and figures. The program compiles once
per (batch shape, image size, K, method set): once per run in the `paper`
protocol, once per distinct image size in the `native` protocol (images are
batched by size). With one image per device, rows equal a batch-1 run's;
with several, float rounding inside batched ops can flip near-ties (see
`simsam_jax.evaluation.runner`).

Outputs in `--workdir`:

* `config.json`: the configuration of the run. Re-running with the same
  workdir resumes; a configuration that would change results (dataset,
  checkpoint, protocol, K, seed, ...) is refused before any work.
* `per_image.csv`: one row per image x method (id, split, file names, DSC,
  IoU, NSD, confidence, chosen index, foreground fraction), appended and
  flushed image by image as each batch finishes: an interrupted run loses
  nothing written, and a re-run computes only the missing rows (in the
  `native` protocol rows are appended in the order their size-batches
  finish; the merged file of a sharded run is sorted by id).
* `results.json`: per method mean / population std / n of each metric, the
  Wilcoxon signed-rank test and paired bootstrap CI of every method vs SAM,
  the empty-mask policy, skipped files, the config, software versions and the
  checkpoint's sha256.
* `table.md`: Table 1 layout (mean ± std in percent, ‡ where p < 0.01 vs SAM).
* `figures/`: panels like the paper's Fig. 2 (image with box, ground truth,
  SAM, SimSAM, union of the K candidates) for `config.num_figures` images.
* `masks/<method>/<id>.png` when `config.save_masks`.

Several processes can share the work (`config.num_shards`,
`config.shard_index`, `config.distributed`): each evaluates the images
`i % num_shards == shard_index` of the split and appends its rows to
`shards/SSSSS-of-NNNNN.csv` in the common workdir (which must be on storage
every process sees); the process that finds every image done writes the merged
`per_image.csv` and the reports. Per-image results depend only on the
configuration and the image id, so they equal a one-process run's.

  # on each of 4 machines (or as a 4-task cluster array), I = 0..3:
  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=/shared/busi \
      --config.num_shards=4 --config.shard_index=I
  # on every host of a Cloud TPU pod slice (one shard per JAX process):
  python -m simsam_jax.evaluate --config=configs/busi_paper.py --workdir=/shared/busi \
      --config.distributed=auto --config.num_shards=0
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import datetime
import glob
import io
import json
import math
import os
import platform
import sys
import warnings
from typing import Any, Optional

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags
from PIL import Image, ImageDraw

from simsam_jax import __version__, profiles
from simsam_jax import workdir as workdir_lib
from simsam_jax.data import loading, protocols
from simsam_jax.data.common import DatasetError
from simsam_jax.evaluation import compare_methods, policy_description, summarize
from simsam_jax.evaluation import metrics as metrics_lib
from simsam_jax.evaluation import runner as runner_lib
from simsam_jax.evaluation import uncertainty
from simsam_jax.evaluation.plots import agreement_image
from simsam_jax.evaluation.metrics import as_policy
from simsam_jax.evaluation.methods import method_configs

METRICS = ("dsc", "iou", "nsd")
CSV_FIELDS = ("id", "split", "image_file", "mask_files", "method", "dsc", "iou", "nsd",
              "confidence", "chosen", "foreground", "iou_prediction", "chosen_score")
# Settings that change per-image results: a workdir refuses to mix them.
RESULT_KEYS = ("dataset", "builder_config", "checkpoint", "protocol", "k", "seed",
               "nsd_tolerance", "empty_mask_policy", "precision", "profile",
               "nsd_tolerance_mm")
PAPER_METHOD_ORDER = ("sam", "simsam", "random", "pixel_mean", "k1")


class EvaluationError(ValueError):
  """A bad configuration or workdir, reported before any work starts."""


# ----------------------------------------------------------------------------
# Model and methods.
# ----------------------------------------------------------------------------


def load_sam_model(spec: str, precision: str = "float32", attention_impl: str = "xla"):
  """`simsam_jax.workdir.load_sam_model`, with errors as EvaluationError."""
  try:
    return workdir_lib.load_sam_model(spec, precision, attention_impl)
  except ValueError as e:
    raise EvaluationError(str(e)) from None


# ----------------------------------------------------------------------------
# Workdir: config check, CSV resume, atomic files.
# ----------------------------------------------------------------------------


_config_dict = workdir_lib.config_dict


def nsd_tolerance(config: ConfigDict) -> float:
  """NSD tolerance in the units of the examples' spacing.

  `nsd_tolerance_mm` (> 0) for datasets with a physical spacing (NIfTI
  folders: spacing in mm), else `nsd_tolerance` (pixels, spacing (1, 1)).
  """
  mm = float(config.get("nsd_tolerance_mm", 0.0) or 0.0)
  if mm < 0 or not math.isfinite(mm):
    raise EvaluationError(f"--config.nsd_tolerance_mm={mm}: must be >= 0")
  return mm if mm > 0 else float(config.nsd_tolerance)


def check_workdir(workdir: str, config: ConfigDict, keys=RESULT_KEYS) -> None:
  """Refuses a workdir holding a run whose results-defining config differs.

  `keys`: the config fields that define results. Writes nothing (see
  `record_config`).
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise EvaluationError(f"--workdir={workdir} exists and is not a folder")
  try:
    workdir_lib.refuse_changed_config(workdir, _config_dict(config), keys)
  except ValueError as e:
    raise EvaluationError(str(e)) from None


def record_config(workdir: str, config: ConfigDict) -> None:
  """Creates the workdir and writes `config.json` (after every check passed)."""
  os.makedirs(workdir, exist_ok=True)
  write_atomic(os.path.join(workdir, "config.json"),
               json.dumps(_config_dict(config), indent=2, sort_keys=True))


write_atomic = workdir_lib.write_atomic


def read_rows(path: str, repair: bool = True,
              key=("id", "method")) -> list[dict[str, str]]:
  """Rows of a per-image CSV; a torn last line (killed mid-write) is dropped.

  Args:
    path: the CSV.
    repair: also remove the torn line from the file (only for a file this
      process is about to append to; another shard's file is read as is).
    key: the columns that identify a row (rows missing one are dropped).
  """
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    lines = f.read().splitlines(keepends=True)
  if lines and not lines[-1].endswith("\n"):
    lines = lines[:-1]
    if repair:
      with open(path, "w", newline="") as f:  # drop the torn line for good
        f.writelines(lines)
  rows = list(csv.DictReader(lines))
  return [r for r in rows if all(r.get(k) for k in key)]


class RowWriter:
  """Appends rows to per_image.csv, flushed and fsynced image by image."""

  def __init__(self, path: str, fields=CSV_FIELDS):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    self.file = open(path, "a", newline="")
    self.writer = csv.DictWriter(self.file, fieldnames=fields)
    if new:
      self.writer.writeheader()
      self._sync()

  def write(self, rows: list[dict[str, Any]]) -> None:
    self.writer.writerows(rows)
    self._sync()

  def _sync(self):
    self.file.flush()
    os.fsync(self.file.fileno())

  def close(self):
    self.file.close()


def _fmt(x: float) -> str:
  return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6f}"


def initialize_distributed(spec: str) -> None:
  """`jax.distributed.initialize` from `config.distributed` (once per process).

  Args:
    spec: "" (nothing), "auto" (cluster auto-detection) or
      "HOST:PORT,NUM_PROCESSES,PROCESS_ID".
  """
  spec = str(spec or "").strip()
  if not spec:
    return
  if jax.distributed.is_initialized():
    return  # already initialised by the caller
  kwargs = {}
  if spec != "auto":
    parts = spec.split(",")
    try:
      address, num, index = parts
      kwargs = dict(coordinator_address=address, num_processes=int(num),
                    process_id=int(index))
    except ValueError:
      raise EvaluationError(
          f"--config.distributed={spec!r}: expected '', 'auto' or "
          "'HOST:PORT,NUM_PROCESSES,PROCESS_ID'") from None
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    raise EvaluationError(f"--config.distributed={spec!r}: {e}") from None


def resolve_shard(config: ConfigDict) -> tuple[int, int]:
  """(shard_index, num_shards) of this process; num_shards 0 = JAX processes."""
  num, index = int(config.num_shards), int(config.shard_index)
  if num == 0:
    num, index = jax.process_count(), jax.process_index()
  if num < 1 or not 0 <= index < num:
    raise EvaluationError(f"--config.shard_index={index} must be in [0, "
                          f"--config.num_shards={num})")
  return index, num


def shard_files(workdir: str, index: int, num: int,
                name: str = "per_image.csv") -> tuple[str, Optional[str]]:
  """(rows CSV, skipped-examples JSON or None) written by shard `index`;
  `name` is the merged CSV's file name."""
  if num == 1:
    return os.path.join(workdir, name), None
  base = os.path.join(workdir, "shards", f"{index:05d}-of-{num:05d}")
  return base + ".csv", base + ".skipped.json"


def merged_rows(workdir: str, own: Optional[str] = None, name: str = "per_image.csv",
                key_fields=("id", "method")) -> list[dict[str, str]]:
  """Rows of per_image.csv (`name`) and of every shard file, one per key.

  Args:
    workdir: the evaluation folder.
    own: the CSV this process appends to; only its torn last line is repaired.
    name: the merged CSV; key_fields: the columns that identify a row.
  """
  paths = [os.path.join(workdir, name)]
  paths += sorted(glob.glob(os.path.join(workdir, "shards", "*.csv")))
  rows, seen = [], set()
  for path in paths:
    for row in read_rows(path, repair=path == own, key=key_fields):
      key = tuple(row[k] for k in key_fields)
      if key not in seen:
        seen.add(key)
        rows.append(row)
  return rows


def merged_skipped(workdir: str) -> list[dict[str, Any]]:
  """Examples skipped while evaluating (`on_bad_example="skip"`) by any shard."""
  out, seen = [], set()
  for path in sorted(glob.glob(os.path.join(workdir, "shards", "*.skipped.json"))):
    with open(path) as f:
      for record in json.load(f):
        if record["id"] not in seen:
          seen.add(record["id"])
          out.append(record)
  return out


def write_rows(path: str, rows: list[dict[str, str]], methods, fields=CSV_FIELDS,
               column: str = "method", extra_key=lambda r: ()) -> None:
  """Writes rows (sorted by id, then `methods` order of `column`, then
  `extra_key(row)`) atomically as a CSV of `fields`."""
  order = {m: i for i, m in enumerate(methods)}
  rows = sorted(rows, key=lambda r: (r["id"], order.get(r[column], len(order)),
                                     r[column], extra_key(r)))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
  writer.writeheader()
  writer.writerows({k: r.get(k, "") for k in fields} for r in rows)
  write_atomic(path, buffer.getvalue())


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


def _panel(image: np.ndarray, mask: Optional[np.ndarray], color, box=None) -> Image.Image:
  canvas = Image.fromarray(image).convert("RGB")
  if mask is not None:
    tint = np.asarray(canvas).copy()
    tint[mask] = (0.5 * tint[mask] + 0.5 * np.asarray(color)).astype(np.uint8)
    canvas = Image.fromarray(tint)
  if box is not None:
    ImageDraw.Draw(canvas).rectangle([float(v) for v in box], outline=(255, 255, 0), width=2)
  return canvas


def figure(example: protocols.PreparedExample, sam: np.ndarray, simsam: np.ndarray,
           union: np.ndarray, agreement: Optional[np.ndarray] = None) -> Image.Image:
  """Fig. 2 layout: image + box | ground truth | SAM | SimSAM | union of K
  [| agreement map (H, W) in [0, 1] with its colour bar]."""
  panels = [_panel(example.image, None, None, example.box),
            _panel(example.image, example.mask, (0, 255, 0)),
            _panel(example.image, sam, (255, 0, 0)),
            _panel(example.image, simsam, (0, 128, 255)),
            _panel(example.image, union, (255, 0, 255))]
  titles = ["image + box", "ground truth", "SAM", "SimSAM", "union of K"]
  if agreement is not None:
    panels.append(agreement_image(agreement, "K agree"))
    titles.append("agreement of K")
  h, w = example.image.shape[:2]
  sheet = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels) + 14),
                    (0, 0, 0))
  draw = ImageDraw.Draw(sheet)
  for i, (panel, title) in enumerate(zip(panels, titles)):
    sheet.paste(panel, (i * w, 14))  # the agreement panel (wider) comes last
    draw.text((i * w + 2, 1), title, fill=(255, 255, 255))
  return sheet


def _png_bytes(image: Image.Image) -> bytes:
  import io
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def per_method_values(rows, methods, ids) -> dict[str, dict[str, np.ndarray]]:
  """{method: {metric: (N,) float array over `ids` (NaN where missing)}}."""
  index = {(r["id"], r["method"]): r for r in rows}
  out = {}
  for m in methods:
    out[m] = {metric: np.array([float(index[(i, m)][metric]) if (i, m) in index
                                else np.nan for i in ids]) for metric in METRICS}
  return out


def render_table(dataset: str, methods, summaries, comparisons, n: int) -> str:
  """Table 1 layout: mean ± population std in percent, ‡ for p < 0.01 vs SAM."""
  order = [m for m in PAPER_METHOD_ORDER if m in methods] + [
      m for m in methods if m not in PAPER_METHOD_ORDER]
  lines = [f"# {dataset}: DSC / NSD (%), mean ± std over {n} images",
           "", "| Method | DSC ↑ | NSD ↑ | IoU ↑ |", "|---|---|---|---|"]
  for m in order:
    cells = []
    for metric in ("dsc", "nsd", "iou"):
      s = summaries[m][metric]
      cell = f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"
      comp = comparisons.get(m, {}).get(metric) if m != "sam" else None
      if comp and comp.get("marker"):
        cell += f" {comp['marker']}"
      cells.append(cell)
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "‡: Wilcoxon signed-rank test vs SAM, p < 0.01 (images where both "
            "masks are empty are excluded)."]
  return "\n".join(lines) + "\n"


def software_versions() -> dict[str, str]:
  import importlib.metadata as md
  versions = {"python": platform.python_version(), "simsam_jax": __version__}
  for pkg in ("jax", "jaxlib", "flax", "numpy", "scipy", "tensorflow-datasets",
              "surface-distance", "orbax-checkpoint", "Pillow"):
    try:
      versions[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      versions[pkg] = None
  versions["jax_backend"] = jax.default_backend()
  return versions


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


image_key = runner_lib.image_key  # (seed, id) -> key; resume- and batch-safe


def load_examples(config: ConfigDict) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(examples of `config.split` sorted by id, examples skipped while building).

  Builds the dataset on first use. Raises EvaluationError (bad dataset,
  folder, split, or an empty split).
  """
  try:
    builder = loading.prepare_builder(
        config.dataset, os.path.expanduser(config.data_dir),
        os.path.expanduser(config.manual_dir) if config.manual_dir else None,
        config.builder_config or None, on_bad_example=config.on_bad_example)
    examples = list(loading.iter_split(builder, config.split))
  except (DatasetError, ValueError) as e:
    raise EvaluationError(str(e)) from None
  try:
    skipped = loading.skipped_examples(builder)
  except (OSError, ValueError):
    skipped = []
  examples.sort(key=lambda e: e["id"])
  if not examples:
    raise EvaluationError(f"{config.dataset}: split {config.split!r} has no example")
  return examples, skipped


def evaluate(config: ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) an evaluation; returns the results.json content."""
  methods = [m.strip() for m in str(config.methods).split(",") if m.strip()]
  if not methods:
    raise EvaluationError("--config.methods is empty")
  try:
    configs = method_configs(methods, int(config.k), int(config.seed))
    policy = as_policy(config.empty_mask_policy)
    protocol = protocols.get_protocol(config.protocol)
  except ValueError as e:
    raise EvaluationError(f"--config: {e}") from None
  if not config.data_dir:
    raise EvaluationError("--config.data_dir is required (where the TFDS dataset is built)")
  initialize_distributed(config.distributed)
  try:
    batch_size = runner_lib.resolve_batch_size(config.get("batch_size", 0))
  except ValueError as e:
    raise EvaluationError(str(e)) from None
  shard_index, num_shards = resolve_shard(config)
  check_workdir(workdir, config)
  try:
    uncertainty.check_review_workdir(config.get("review_workdir", ""), _config_dict(config))
  except ValueError as e:
    raise EvaluationError(str(e)) from None
  # Everything that can fail on bad input (checkpoint, dataset) comes before
  # the first write to the workdir: a refused run leaves nothing behind.
  model, checkpoint = load_sam_model(config.checkpoint, config.get("precision", "float32"),
                                     config.get("attention_impl", "xla"))
  try:
    checkpoint["profile"], checkpoint["profile_source"] = profiles.resolve(
        checkpoint["profile"], config.get("profile") or None, "--config.profile")
  except ValueError as e:
    raise EvaluationError(str(e)) from None
  tolerance = nsd_tolerance(config)

  examples, skipped = load_examples(config)
  runner = runner_lib.BatchRunner(model, configs, batch_size, policy,
                                  profile=checkpoint["profile"])
  record_config(workdir, config)

  csv_path, skipped_path = shard_files(workdir, shard_index, num_shards)
  rows = merged_rows(workdir, own=csv_path)  # own torn line repaired before appending
  done = {(r["id"], r["method"]) for r in rows}
  figure_ids = {e["id"] for e in examples[:int(config.num_figures)]}
  mine = examples[shard_index::num_shards]
  work = []  # (example, (methods to compute, figure path or None))
  for example in mine:
    todo = [m for m in methods if (example["id"], m) not in done]
    fig_path = os.path.join(workdir, "figures", f"{example['id']}.png")
    want_fig = (example["id"] in figure_ids and "simsam" in configs
                and not os.path.exists(fig_path))
    if todo or want_fig:
      work.append((example, (todo, fig_path if want_fig else None)))

  def host_work(item: runner_lib.Item, result: dict[str, Any]) -> list[dict[str, Any]]:
    """NSD, CSV rows, mask PNGs and the figure of one image (thread pool)."""
    prepared, (todo, fig_path) = item.prepared, item.extra
    new_rows = []
    for m in todo:
      r = result[m]
      nsd = metrics_lib.nsd(r["mask"], prepared.mask, tolerance, prepared.spacing, policy)
      new_rows.append({
          "id": prepared.id, "split": item.example.get("split", config.split),
          "image_file": prepared.file_names[0] if prepared.file_names else "",
          "mask_files": ";".join(prepared.file_names[1:]), "method": m,
          "dsc": _fmt(r["dsc"]), "iou": _fmt(r["iou"]), "nsd": _fmt(nsd),
          "confidence": _fmt(r["confidence"]), "chosen": r["chosen"],
          "foreground": _fmt(float(r["mask"].mean())),
          "iou_prediction": _fmt(r["iou_prediction"]), "chosen_score": _fmt(r["chosen_score"])})
      if config.save_masks:
        write_atomic(os.path.join(workdir, "masks", m, f"{prepared.id}.png"),
                     _png_bytes(Image.fromarray(r["mask"].astype(np.uint8) * 255)))
    if fig_path is not None:
      masks = result[runner_lib.FIGURE]
      write_atomic(fig_path, _png_bytes(figure(prepared, masks["sam"], result["simsam"]["mask"],
                                               masks["union"], masks["agreement"])))
    return new_rows

  writer = RowWriter(csv_path)
  bad = []
  bar = None
  if progress:
    from tqdm import tqdm
    shard = f" shard {shard_index}/{num_shards}" if num_shards > 1 else ""
    bar = tqdm(total=len(work), desc=f"{config.dataset}/{config.split}{shard}", unit="img")
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2)))
  in_flight = collections.deque()  # futures of host work, written in order
  dispatched = collections.deque()  # batches on the device, not fetched yet

  def write_finished(wait_until: int) -> None:
    """Writes rows of finished host work, waiting while more than
    `wait_until` images are in flight."""
    while in_flight and (in_flight[0].done() or len(in_flight) > wait_until):
      new_rows = in_flight.popleft().result()
      writer.write(new_rows)
      rows.extend({k: str(v) for k, v in row.items()} for row in new_rows)
      done.update((row["id"], row["method"]) for row in new_rows)
      if bar is not None:
        bar.update(1)
        means = {}
        for m in ("sam", "simsam"):
          vals = [float(r["nsd"]) for r in rows if r["method"] == m and r["nsd"] != "nan"]
          if vals:
            means[f"{m}_nsd"] = f"{100 * np.mean(vals):.1f}"
        bar.set_postfix(means)

  def fetch_oldest() -> None:
    items, handle = dispatched.popleft()
    for item, result in zip(items, runner.fetch(handle)):
      in_flight.append(pool.submit(host_work, item, result))
    write_finished(wait_until=4 * batch_size)

  # `metrics.nsd` scopes its warning filters with `warnings.catch_warnings`,
  # which is not thread-safe: one thread may restore filters while another
  # is inside `surface_distance`. The same deprecations are ignored here for
  # the whole pool, and the process's filters come back once it is done.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            module=r"surface_distance")
    try:
      loader = runner_lib.prefetch(
          work, lambda example: protocols.prepare(example, protocol, config.dataset),
          runner.image_size, int(config.seed), buffer_size=2 * batch_size,
          profile=checkpoint["profile"])
      for batch in runner_lib.batches(loader, batch_size):
        if isinstance(batch, runner_lib.Item):  # preparing failed
          example = batch.example
          if config.on_bad_example != "skip":
            raise EvaluationError(f"{example.get('image_file', example['id'])}: {batch.error}")
          bad.append({"id": example["id"], "file": example.get("image_file"),
                      "reason": batch.error})
          if bar is not None:
            bar.update(1)
          continue
        # The next batch goes to the device before the previous one is fetched:
        # the host finishes one batch while the device computes the next.
        dispatched.append((batch, runner.dispatch(batch)))
        if len(dispatched) > 1:
          fetch_oldest()
      while dispatched:
        fetch_oldest()
      write_finished(wait_until=0)
    finally:
      pool.shutdown(wait=True, cancel_futures=True)
      writer.close()
      if bar is not None:
        bar.close()
      if skipped_path is not None:
        write_atomic(skipped_path, json.dumps(bad, indent=1))

  if num_shards > 1 or os.path.isdir(os.path.join(workdir, "shards")):
    rows = merged_rows(workdir)
    own_bad = {b["id"] for b in bad}
    bad = bad + [b for b in merged_skipped(workdir) if b["id"] not in own_bad]
    done = {(r["id"], r["method"]) for r in rows}
    bad_ids = {b["id"] for b in bad}
    missing = [e["id"] for e in examples if e["id"] not in bad_ids
               and any((e["id"], m) not in done for m in methods)]
    if missing:
      logging.info("shard %d of %d done; %d images of other shards missing",
                   shard_index, num_shards, len(missing))
      return {"complete": False, "shard": [shard_index, num_shards],
              "missing_images": len(missing), "num_images": len(examples) - len(missing),
              "methods": methods}
    write_rows(os.path.join(workdir, "per_image.csv"), rows, methods)

  ids = sorted({r["id"] for r in rows if r["method"] in methods}
               & {e["id"] for e in examples})
  values = per_method_values(rows, methods, ids)
  summaries = {m: {metric: summarize(values[m][metric]) for metric in METRICS}
               for m in methods}
  comparison = (compare_methods(values, baseline="sam", metrics=METRICS)
                if "sam" in methods and len(methods) > 1 else None)
  comparisons = comparison["comparisons"] if comparison else {}
  results = {
      "complete": True,
      "dataset": config.dataset, "builder_config": config.builder_config,
      "split": config.split, "protocol": dataclasses.asdict(protocol),
      "num_images": len(ids), "methods": methods,
      "summaries": summaries, "statistics": comparison,
      "empty_mask_policy": policy_description(policy),
      "nsd_tolerance": float(config.nsd_tolerance),
      "nsd_tolerance_used": tolerance,
      "nsd_tolerance_units": "mm" if float(config.get("nsd_tolerance_mm", 0) or 0) > 0
                             else "spacing units (pixels unless the dataset has a spacing)",
      "skipped": {"while_building": skipped, "while_evaluating": bad},
      "checkpoint": checkpoint, "config": _config_dict(config),
      "software": software_versions(),
      "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
  }
  review_csv = os.path.join(config.get("review_workdir", ""), "per_image.csv")
  results["uncertainty"], uncertainty_md = uncertainty.report(
      workdir, rows, ids, _config_dict(config),
      read_rows(review_csv, repair=False) if config.get("review_workdir") else None)
  write_atomic(os.path.join(workdir, "results.json"),
               json.dumps(_clean(results), indent=2, default=_json_default,
                          allow_nan=False))
  write_atomic(os.path.join(workdir, "table.md"),
               render_table(config.dataset, methods, summaries, comparisons, len(ids))
               + uncertainty_md)
  return results


def _clean(x):
  """NaN -> None and numpy scalars -> Python, recursively (strict JSON)."""
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    x = x.item()
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, float) and math.isnan(x):
    return None
  return str(x)


def incomplete_message(results: dict[str, Any], workdir: str) -> str:
  """What a shard that finished before the others prints."""
  index, num = results["shard"]
  return (f"Shard {index} of {num} done; {results['missing_images']} images of other "
          f"shards are not done yet. The last shard to finish writes per_image.csv, "
          f"results.json and table.md in {workdir}.")


def define_flags() -> None:
  """Defines --config and --workdir (only when run as a program, so that other
  launchers, such as `simsam_jax.demo`, can import this module)."""
  config_flags.DEFINE_config_file("config", None, "Evaluation config file.")
  flags.DEFINE_string("workdir", None, "Output folder (resumable).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config is None or not workdir:
    print("simsam_jax.evaluate: error: --config and --workdir are required", file=sys.stderr)
    return 1
  try:
    results = evaluate(config, workdir)
  except (EvaluationError, DatasetError) as e:
    print(f"simsam_jax.evaluate: error: {e}", file=sys.stderr)
    return 1
  if not results["complete"]:
    print(incomplete_message(results, workdir))
    return 0
  with open(os.path.join(workdir, "table.md")) as f:
    print(f.read())
  logging.info("wrote %s", workdir)
  return 0


if __name__ == "__main__":
  define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
