"""Evaluation plug-ins: per-image metrics and columns, report sections and
figures, each registered by name and chosen by the evaluation config.

* `METRICS`: a per-image value, `fn(PerImage) -> float | int | str`, one CSV
  column per name. Names in `config.metrics` (default "dsc,iou,nsd") are
  also summarised in `results.json` (mean, population std, n; Wilcoxon and
  paired bootstrap against SAM) and are columns of `table.md` (in the
  paper's order DSC, NSD, IoU first, then in config order); names in
  `config.columns` are written to the CSV only. Declarations: `label` (the
  table header, default the name in upper case) and `percent` (True: the
  table shows 100 x the value).
* `REPORTS`: a section of `results.json` and `table.md`,
  `fn(ReportInput) -> (json value, markdown)`, stored under its name;
  chosen by `config.reports` (default "uncertainty").
* `FIGURES`: `fn(FigureInput) -> PIL.Image` for each of the first
  `config.num_figures` images, chosen by `config.figures` (default
  "panels"), written to `figures/<name>/<id>.png`. Declarations: `needs`
  (methods that must be evaluated for the figure to be drawn) and `folder`
  (the folder under `figures/`, default the name; "panels", the paper's
  Fig. 2, writes into `figures/` itself).

A user's module registers its own (and click strategies, aggregations,
methods, datasets) at import; `--config.import_modules=my_module` (a
comma-separated string or a list of module names on `sys.path`) imports it
before the configuration is checked (on the command line, before the
config file resolves its argument, so `--config=configs/eval.py:MY_DATASET`
accepts a dataset the module registers):

  # my_metrics.py
  from simsam_jax.evaluation.plugins import METRICS

  @METRICS.register("fg_error", label="|FG| error")
  def fg_error(x):
    return abs(float(x.mask.mean()) - float(x.prepared.mask.mean()))

  python -m simsam_jax.evaluate --config=configs/eval.py:busi --workdir=runs/b \\
      --config.import_modules=my_metrics --config.metrics=dsc,iou,nsd,fg_error
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

from simsam_jax.evaluation import metrics as metrics_lib
from simsam_jax.evaluation import uncertainty
from simsam_jax.evaluation.plots import agreement_image
from simsam_jax.simsam.registry import Registry

METRICS = Registry("metric", label=None, percent=True)
REPORTS = Registry("report section")
FIGURES = Registry("figure", needs=(), folder=None)

DEFAULT_METRICS = "dsc,iou,nsd"
DEFAULT_COLUMNS = "confidence,chosen,foreground,iou_prediction,chosen_score"
DEFAULT_REPORTS = "uncertainty"
DEFAULT_FIGURES = "panels"
TABLE_ORDER = ("dsc", "nsd", "iou")  # the paper's Table 1 columns come first


@dataclasses.dataclass(frozen=True)
class PerImage:
  """What a metric sees for one image and one method (host, numpy).

  Attributes:
    method: the method's name.
    mask: (H, W) bool, the method's mask at the protocol's resolution.
    result: the method's outputs (`runner.BatchRunner.fetch`): "dsc", "iou"
      (computed on the device), "confidence", "chosen", "iou_prediction",
      "chosen_score".
    prepared: the `protocols.PreparedExample` (image, ground-truth `mask`,
      `box`, `spacing`, ...).
    policy: the run's `EmptyMaskPolicy`.
    nsd_tolerance: the NSD tolerance in spacing units.
  """

  method: str
  mask: np.ndarray
  result: dict
  prepared: Any
  policy: metrics_lib.EmptyMaskPolicy
  nsd_tolerance: float


@dataclasses.dataclass(frozen=True)
class ReportInput:
  """What a report section sees once every image is done.

  Attributes:
    workdir: the evaluation folder (a section may write files there).
    rows: the merged per-image rows (dicts of strings).
    ids: the evaluated image ids; methods: the method names.
    summaries: {method: {metric: summary}}; comparisons: {method: {metric:
      comparison with SAM}} (empty without SAM).
    config: the run's config as a dict.
  """

  workdir: str
  rows: Sequence[dict]
  ids: Sequence[str]
  methods: Sequence[str]
  summaries: dict
  comparisons: dict
  config: dict


@dataclasses.dataclass(frozen=True)
class FigureInput:
  """What a figure sees for one image.

  Attributes:
    prepared: the `protocols.PreparedExample`.
    results: {method: outputs} of every method evaluated for the image in
      this run (those the figure `needs` are always there).
    panels: when "simsam" was evaluated: {"sam": (H, W) bool SAM mask,
      "union": (H, W) bool union of the K candidate masks, "agreement":
      (H, W) float32 in [0, 1]}; else None.
  """

  prepared: Any
  results: dict
  panels: Optional[dict]


def names(value: Union[str, Sequence[str], None], field: str) -> list[str]:
  """A comma-separated string or a list of names -> list (ValueError names
  `--config.FIELD` when an entry is not a string)."""
  if value is None:
    return []
  if isinstance(value, str):
    return [n.strip() for n in value.split(",") if n.strip()]
  out = []
  for n in value:
    if not isinstance(n, str):
      raise ValueError(f"--config.{field}: expected names, got {n!r}")
    out.append(n.strip())
  return [n for n in out if n]


def import_modules(value: Union[str, Sequence[str], None]) -> list[str]:
  """Imports the modules of `--config.import_modules` (they register their
  plug-ins at import); ValueError naming the flag and the module."""
  modules = names(value, "import_modules")
  for name in modules:
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"--config.import_modules: cannot import {name!r}: "
                       f"{type(e).__name__}: {e}") from None
  return modules


IMPORT_MODULES_FLAG = "--config.import_modules"


def import_modules_in_argv(argv: Sequence[str]) -> list[str]:
  """Imports the modules that a command line's `--config.import_modules`
  names (`=VALUE` or a separate `VALUE`; the last one given counts, as
  absl's), before absl loads `--config=FILE:ARG`.

  absl evaluates the config file's `get_config(ARG)` while it parses
  `--config`, and applies the `--config.FIELD` overrides only afterwards; a
  dataset that a user's module registers would be unknown to `ARG`
  (`configs/eval.py:MY_DATASET`) without this. A `--flagfile` is not read.

  Returns:
    the module names imported. Raises ValueError as `import_modules`.
  """
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(IMPORT_MODULES_FLAG + "="):
      value = arg[len(IMPORT_MODULES_FLAG) + 1:]
    elif arg == IMPORT_MODULES_FLAG and i + 1 < len(argv):
      value = argv[i + 1]
  return import_modules(value)


def check(registry: Registry, value, field: str) -> list[str]:
  """The names of `--config.FIELD`, each registered (ValueError otherwise)."""
  out = names(value, field)
  for name in out:
    try:
      registry.get(name)
    except ValueError as e:
      raise ValueError(f"--config.{field}: {e}") from None
  if len(set(out)) != len(out):
    raise ValueError(f"--config.{field}={','.join(out)} names one twice")
  return out


def label(name: str) -> str:
  return METRICS.declared(name, "label") or name.upper()


def table_metrics(summarised: Sequence[str]) -> list[str]:
  """Table columns: the paper's DSC, NSD, IoU first, then the others."""
  return ([m for m in TABLE_ORDER if m in summarised]
          + [m for m in summarised if m not in TABLE_ORDER])


def format_value(value: Any) -> str:
  """A CSV cell: floats with 6 decimals ("nan" for NaN / None), else str."""
  if value is None:
    return "nan"
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value))
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return "nan" if math.isnan(value) else f"{value:.6f}"
  return str(value)


def figure_path(workdir: str, name: str, example_id: str) -> str:
  folder = FIGURES.declared(name, "folder")
  folder = name if folder is None else folder
  return os.path.join(workdir, "figures", *([folder] if folder else []), f"{example_id}.png")


# -- built-in metrics and columns ----------------------------------------------


@METRICS.register("dsc", label="DSC ↑")
def dsc(x: PerImage) -> float:
  """Dice (computed on the device with the empty-mask policy)."""
  return x.result["dsc"]


@METRICS.register("iou", label="IoU ↑")
def iou(x: PerImage) -> float:
  """IoU (computed on the device with the empty-mask policy)."""
  return x.result["iou"]


@METRICS.register("nsd", label="NSD ↑")
def nsd(x: PerImage) -> float:
  """Normalised surface Dice at the run's tolerance (`metrics.nsd`)."""
  return metrics_lib.nsd(x.mask, x.prepared.mask, x.nsd_tolerance, x.prepared.spacing,
                         x.policy)


@METRICS.register("confidence", percent=False)
def confidence(x: PerImage) -> float:
  """SimSAM's mean pairwise IoU of the K candidates (NaN for SAM)."""
  return x.result["confidence"]


@METRICS.register("chosen", percent=False)
def chosen(x: PerImage) -> int:
  """The chosen candidate's index (-1 for SAM and synthesised masks)."""
  return x.result["chosen"]


@METRICS.register("foreground")
def foreground(x: PerImage) -> float:
  """Fraction of the image the mask covers."""
  return float(x.mask.mean())


@METRICS.register("iou_prediction", percent=False)
def iou_prediction(x: PerImage) -> float:
  """SAM's IoU head for the returned mask (SimSAM: the chosen candidate)."""
  return x.result["iou_prediction"]


@METRICS.register("chosen_score", percent=False)
def chosen_score(x: PerImage) -> float:
  """The chosen candidate's aggregation score (NaN for SAM)."""
  return x.result["chosen_score"]


# -- built-in report sections and figures ----------------------------------------


@REPORTS.register("uncertainty")
def uncertainty_section(x: ReportInput) -> tuple[Any, str]:
  """Risk-coverage, AURC / E-AURC and the review list (`uncertainty.report`)."""
  from simsam_jax.evaluation.evaluator import read_rows  # pylint: disable=import-outside-toplevel
  review = x.config.get("review_workdir") or ""
  review_rows = None
  if review:
    review_rows = read_rows(os.path.join(review, "per_image.csv"), repair=False)
  return uncertainty.report(x.workdir, x.rows, x.ids, x.config, review_rows)


@FIGURES.register("panels", needs=("simsam",), folder="")
def panels(x: FigureInput):
  """The paper's Fig. 2: image + box | ground truth | SAM | SimSAM | union of
  the K candidates | agreement of the K (with its colour bar)."""
  return figure(x.prepared, x.panels["sam"], x.results["simsam"]["mask"],
                x.panels["union"], x.panels["agreement"])


def _panel(image: np.ndarray, mask: Optional[np.ndarray], color, box=None):
  canvas = Image.fromarray(image).convert("RGB")
  if mask is not None:
    tint = np.asarray(canvas).copy()
    tint[mask] = (0.5 * tint[mask] + 0.5 * np.asarray(color)).astype(np.uint8)
    canvas = Image.fromarray(tint)
  if box is not None:
    ImageDraw.Draw(canvas).rectangle([float(v) for v in box], outline=(255, 255, 0), width=2)
  return canvas


def figure(example, sam: np.ndarray, simsam: np.ndarray, union: np.ndarray,
           agreement: Optional[np.ndarray] = None):
  """Fig. 2 layout: image + box | ground truth | SAM | SimSAM | union of K
  [| agreement map (H, W) in [0, 1] with its colour bar]; masks (H, W) bool."""
  panels_ = [_panel(example.image, None, None, example.box),
             _panel(example.image, example.mask, (0, 255, 0)),
             _panel(example.image, sam, (255, 0, 0)),
             _panel(example.image, simsam, (0, 128, 255)),
             _panel(example.image, union, (255, 0, 255))]
  titles = ["image + box", "ground truth", "SAM", "SimSAM", "union of K"]
  if agreement is not None:
    panels_.append(agreement_image(agreement, "K agree"))
    titles.append("agreement of K")
  w = example.image.shape[1]
  sheet = Image.new("RGB", (sum(p.width for p in panels_), max(p.height for p in panels_) + 14),
                    (0, 0, 0))
  draw = ImageDraw.Draw(sheet)
  for i, (panel, title) in enumerate(zip(panels_, titles)):
    sheet.paste(panel, (i * w, 14))  # the agreement panel (wider) comes last
    draw.text((i * w + 2, 1), title, fill=(255, 255, 255))
  return sheet
