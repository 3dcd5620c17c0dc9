"""The evaluation run behind `python -m simsam_jax.evaluate` (the launcher
parses flags and calls `evaluate`; notebooks and other launchers call it too).

`evaluate(config, workdir)` checks the configuration, takes the workdir's
lock (`simsam_jax.workdir.lock`: one run per workdir, or per shard), loads
the model and the dataset, runs `runner.BatchRunner` over batches of images
and, on a thread pool, turns each image's outputs into CSV rows (the
metrics and columns of `evaluation.plugins.METRICS` that the config names),
mask PNGs and figures (`plugins.FIGURES`); once every image is done it
writes `results.json` and `table.md` with the report sections
(`plugins.REPORTS`). See `simsam_jax/evaluate.py` for the outputs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import datetime
import functools
import glob
import io
import json
import math
import os
import platform
import warnings
from typing import Any, Optional

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict
from PIL import Image

from simsam_jax import __version__, profiles
from simsam_jax import workdir as workdir_lib
from simsam_jax.data import loading, protocols
from simsam_jax.data.common import DatasetError
from simsam_jax.evaluation import plugins
from simsam_jax.evaluation import runner as runner_lib
from simsam_jax.evaluation import uncertainty
from simsam_jax.evaluation.metrics import as_policy, policy_description
from simsam_jax.evaluation.methods import method_configs
from simsam_jax.evaluation.statistics import compare_methods, summarize

METRICS = tuple(plugins.names(plugins.DEFAULT_METRICS, "metrics"))
ID_FIELDS = ("id", "split", "image_file", "mask_files", "method")
CSV_FIELDS = ID_FIELDS + METRICS + tuple(plugins.names(plugins.DEFAULT_COLUMNS, "columns"))
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


# `simsam_jax.workdir.load_sam_model`, with errors as EvaluationError.
load_sam_model = functools.partial(workdir_lib.load_sam_model, error=EvaluationError)


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


_fmt = plugins.format_value


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


def _png_bytes(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


# ----------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------


def per_method_values(rows, methods, ids, metrics=METRICS) -> dict[str, dict[str, np.ndarray]]:
  """{method: {metric: (N,) float array over `ids` (NaN where missing)}}."""
  index = {(r["id"], r["method"]): r for r in rows}
  out = {}
  for m in methods:
    out[m] = {metric: np.array([float(index[(i, m)][metric]) if (i, m) in index
                                else np.nan for i in ids]) for metric in metrics}
  return out


def render_table(dataset: str, methods, summaries, comparisons, n: int,
                 metrics=METRICS) -> str:
  """Table 1 layout: mean ± population std (in percent for the metrics
  declared `percent`), ‡ for p < 0.01 vs SAM; columns
  `plugins.table_metrics(metrics)`."""
  order = [m for m in PAPER_METHOD_ORDER if m in methods] + [
      m for m in methods if m not in PAPER_METHOD_ORDER]
  columns = plugins.table_metrics(metrics)
  lines = [f"# {dataset}: DSC / NSD (%), mean ± std over {n} images", "",
           "| Method | " + " | ".join(plugins.label(c) for c in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for m in order:
    cells = []
    for metric in columns:
      s = summaries[m][metric]
      scale = 100 if plugins.METRICS.declared(metric, "percent") else 1
      digits = 1 if scale == 100 else 3
      cell = f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"
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


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a configuration asks for, checked before any work.

  Attributes:
    methods: method names, in config order; configs: {name: SimSamConfig
      or None (SAM)}.
    metrics: summarised per-image metrics (`plugins.METRICS` names);
      columns: further CSV columns; fields: the CSV's columns.
    reports: report sections (`plugins.REPORTS`); figures: figure names
      (`plugins.FIGURES`).
  """

  methods: tuple[str, ...]
  configs: dict
  metrics: tuple[str, ...]
  columns: tuple[str, ...]
  reports: tuple[str, ...]
  figures: tuple[str, ...]

  @property
  def fields(self) -> tuple[str, ...]:
    return ID_FIELDS + self.metrics + self.columns


def plan(config: ConfigDict) -> Plan:
  """Imports `config.import_modules`, then checks methods and plug-ins;
  EvaluationError names the bad field."""
  try:
    plugins.import_modules(config.get("import_modules", ""))
  except ValueError as e:
    raise EvaluationError(str(e)) from None
  if not config.methods:
    raise EvaluationError("--config.methods is empty")
  try:
    configs = method_configs(config.methods, int(config.k), int(config.seed))
  except ValueError as e:
    raise EvaluationError(f"--config: {e}") from None
  if not configs:
    raise EvaluationError("--config.methods is empty")
  try:
    metrics = plugins.check(plugins.METRICS, config.get("metrics", plugins.DEFAULT_METRICS),
                            "metrics")
    columns = plugins.check(plugins.METRICS, config.get("columns", plugins.DEFAULT_COLUMNS),
                            "columns")
    reports = plugins.check(plugins.REPORTS, config.get("reports", plugins.DEFAULT_REPORTS),
                            "reports")
    figures = plugins.check(plugins.FIGURES, config.get("figures", plugins.DEFAULT_FIGURES),
                            "figures")
  except ValueError as e:
    raise EvaluationError(str(e)) from None
  both = sorted(set(metrics) & set(columns))
  if both:
    raise EvaluationError(f"--config.metrics and --config.columns both name {both}")
  return Plan(tuple(configs), configs, tuple(metrics), tuple(columns), tuple(reports),
              tuple(figures))


def check_columns(workdir: str, config: ConfigDict) -> None:
  """Refuses to resume a workdir whose rows have other metrics or columns
  (absent from an older config.json: the defaults)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  for field, default in (("metrics", plugins.DEFAULT_METRICS),
                         ("columns", plugins.DEFAULT_COLUMNS)):
    before = plugins.names(previous.get(field, default), field)
    now = plugins.names(config.get(field, default), field)
    if before != now:
      raise EvaluationError(f"--workdir={workdir} holds rows with --config.{field}="
                            f"{','.join(before)}, not {','.join(now)}; use another workdir")


@contextlib.contextmanager
def owned_workdir(workdir: str, shard: Optional[tuple[int, int]] = None):
  """`simsam_jax.workdir.lock` (one run per workdir, or per shard), with a
  busy workdir or a file in its place reported as EvaluationError."""
  stack = contextlib.ExitStack()
  try:  # a second run is refused here, at once, before any work
    stack.enter_context(workdir_lib.lock(workdir, shard))
  except workdir_lib.WorkdirError as e:  # busy, or a file in its place
    raise EvaluationError(str(e)) from None
  with stack:
    yield


def evaluate(config: ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) an evaluation; returns the results.json content.

  Raises:
    EvaluationError: bad configuration or workdir (also a workdir that
      another run holds), before anything is written.
  """
  what = plan(config)
  try:
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
  with owned_workdir(workdir, (shard_index, num_shards)):
    return _run(config, workdir, progress, what, policy, protocol, batch_size,
                shard_index, num_shards)


def _run(config: ConfigDict, workdir: str, progress: bool, what: Plan, policy, protocol,
         batch_size: int, shard_index: int, num_shards: int) -> dict[str, Any]:
  """`evaluate` once the configuration is checked and the workdir locked."""
  methods, configs = list(what.methods), what.configs
  check_workdir(workdir, config)
  check_columns(workdir, config)
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
  drawable = [f for f in what.figures
              if all(m in configs for m in plugins.FIGURES.declared(f, "needs"))]
  mine = examples[shard_index::num_shards]
  work = []  # (example, (methods to compute, [(figure, path)]))
  for example in mine:
    todo = [m for m in methods if (example["id"], m) not in done]
    figures = []
    if example["id"] in figure_ids:
      figures = [(f, plugins.figure_path(workdir, f, example["id"])) for f in drawable]
      figures = [(f, path) for f, path in figures if not os.path.exists(path)]
    if todo or figures:
      work.append((example, (todo, figures)))
  value_names = what.metrics + what.columns

  def host_work(item: runner_lib.Item, result: dict[str, Any]) -> list[dict[str, Any]]:
    """Metrics, CSV rows, mask PNGs and figures of one image (thread pool)."""
    prepared, (todo, figures) = item.prepared, item.extra
    new_rows = []
    for m in todo:
      r = result[m]
      x = plugins.PerImage(method=m, mask=r["mask"], result=r, prepared=prepared,
                           policy=policy, nsd_tolerance=tolerance)
      row = {"id": prepared.id, "split": item.example.get("split", config.split),
             "image_file": prepared.file_names[0] if prepared.file_names else "",
             "mask_files": ";".join(prepared.file_names[1:]), "method": m}
      row.update({v: plugins.format_value(plugins.METRICS.get(v)(x)) for v in value_names})
      new_rows.append(row)
      if config.save_masks:
        write_atomic(os.path.join(workdir, "masks", m, f"{prepared.id}.png"),
                     _png_bytes(Image.fromarray(r["mask"].astype(np.uint8) * 255)))
    if figures:
      x = plugins.FigureInput(prepared, {m: r for m, r in result.items()
                                         if m != runner_lib.FIGURE},
                              result.get(runner_lib.FIGURE))
      for name, path in figures:
        write_atomic(path, _png_bytes(plugins.FIGURES.get(name)(x)))
    return new_rows

  writer = RowWriter(csv_path, what.fields)
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
      if bar is not None and "nsd" in value_names:
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
    write_rows(os.path.join(workdir, "per_image.csv"), rows, methods, what.fields)

  ids = sorted({r["id"] for r in rows if r["method"] in methods}
               & {e["id"] for e in examples})
  metrics = what.metrics
  values = per_method_values(rows, methods, ids, metrics)
  summaries = {m: {metric: summarize(values[m][metric]) for metric in metrics}
               for m in methods}
  comparison = (compare_methods(values, baseline="sam", metrics=metrics)
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
  table = render_table(config.dataset, methods, summaries, comparisons, len(ids), metrics)
  section_input = plugins.ReportInput(workdir, rows, ids, methods, summaries, comparisons,
                                      _config_dict(config))
  for name in what.reports:
    results[name], markdown = plugins.REPORTS.get(name)(section_input)
    table += markdown
  write_atomic(os.path.join(workdir, "results.json"),
               json.dumps(_clean(results), indent=2, default=_json_default,
                          allow_nan=False))
  write_atomic(os.path.join(workdir, "table.md"), table)
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


