r"""Interactive evaluation: how many clicks SAM and SimSAM need to reach an IoU.

  python -m simsam_jax.interactive --config=configs/interactive.py:busi \
      --workdir=runs/busi_clicks --config.manual_dir=~/data/busi \
      --config.checkpoint=checkpoints/sam_vit_b

The click protocol of interactive segmentation (RITM's evaluation clicker,
`simsam_jax.simsam.interactive`): for every test image and every start
(`config.starts`: `box` = SAM's box-only mask, `simsam` = SimSAM's mask,
`clicks_only` = no box, empty prediction), N rounds (`config.num_rounds`,
default 20) of "click the interior-most pixel of the largest error, re-decode
with every click so far". The N rounds of all starts of an image are one
compiled program (the encoder runs once per image; rounds are a `lax.scan`;
images of one size are vmapped in batches of `config.batch_size` and
sharded over the local devices).

Dataset, protocol, checkpoint, seed, K (SimSAM's clicks for the `simsam`
start), shards (`num_shards`, `shard_index`, `distributed`) and the workdir
rules are those of `simsam_jax.evaluate` (same helpers): re-running resumes
image by image; a workdir holding another configuration is refused; bad
input is refused before anything is written. Outputs in `--workdir`:

* `config.json`: the configuration.
* `clicks.csv`: one row per image x start x round: `id, start, round, x, y,
  label, iou, dsc` (round 0 is the start's own prediction, with x = y =
  label = -1; label 1 positive / 0 negative; -1 also marks a round without
  click because the prediction was already perfect).
* `noc.json`: per start, NoC@85 and NoC@90 (mean number of clicks to reach
  IoU >= 0.85 / 0.90; 0 when the start already does, N when never, as RITM
  caps it), NoF@85 / NoF@90 (images that never reach it), mIoU after 1, 3,
  5, 10 and 20 clicks (those <= N) and the whole mIoU-vs-clicks curve, the
  per-image NoC, and paired Wilcoxon signed-rank tests of NoC between
  every two starts; plus the config, checkpoint and software versions.
* `table.md`: the same as a table, and the clicks SimSAM saves over SAM.
* `figures/miou_vs_clicks.png`: mIoU vs clicks, one curve per start, with
  the 0.85 and 0.90 levels; `figures/<id>.png` for the first
  `config.num_figures` images: per start, the prediction after 0, 1, 2, 3,
  5, 10 and N clicks with the clicks so far (green positive, red negative).
"""

from __future__ import annotations

import datetime
import io
import itertools
import json
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags
from PIL import Image, ImageDraw

from simsam_jax import console, overlay, processing
from simsam_jax.data import protocols
from simsam_jax.data.common import DatasetError
from simsam_jax.evaluation import evaluator as ev
from simsam_jax.evaluation import wilcoxon_signed_rank
from simsam_jax.evaluation.plots import line_chart
from simsam_jax.simsam import SimSamConfig
from simsam_jax.simsam.interactive import InteractiveConfig, InteractiveSam

CLICK_FIELDS = ("id", "start", "round", "x", "y", "label", "iou", "dsc")
ROW_KEY = ("id", "start", "round")
CLICKS_CSV = "clicks.csv"
RESULT_KEYS = ev.RESULT_KEYS + ("split", "num_rounds", "starts", "mask_prompt", "keep_box")
THRESHOLDS = (0.85, 0.90)
MIOU_AT = (1, 3, 5, 10, 20)
PANEL_ROUNDS = (0, 1, 2, 3, 5, 10, 20)


def interactive_config(config: ConfigDict) -> InteractiveConfig:
  """The `InteractiveConfig` of a launcher config; EvaluationError names the field."""
  starts = tuple(s.strip() for s in str(config.starts).split(",") if s.strip())
  try:
    num_rounds = int(config.num_rounds)
  except (TypeError, ValueError):
    raise ev.EvaluationError(f"--config.num_rounds={config.num_rounds!r} must be a positive "
                             "integer") from None
  result = InteractiveConfig(num_rounds=num_rounds, starts=starts,
                             mask_prompt=str(config.mask_prompt), keep_box=bool(config.keep_box),
                             simsam=SimSamConfig(k=int(config.k), seed=int(config.seed)))
  try:
    return result.validate()
  except ValueError as e:
    field = next((f for f in ("num_rounds", "starts", "mask_prompt") if f in str(e)), "k")
    raise ev.EvaluationError(f"--config.{field}: {e}") from None


# ----------------------------------------------------------------------------
# Metrics from clicks.csv rows (pure).
# ----------------------------------------------------------------------------


def iou_table(rows: Sequence[dict], start: str, ids: Sequence[str],
              num_rounds: int) -> np.ndarray:
  """(len(ids), N + 1) IoU per image and round of one start (NaN if absent)."""
  out = np.full((len(ids), num_rounds + 1), np.nan)
  where = {i: n for n, i in enumerate(ids)}
  for r in rows:
    if r["start"] == start and r["id"] in where and int(r["round"]) <= num_rounds:
      out[where[r["id"]], int(r["round"])] = float(r["iou"])
  return out


def number_of_clicks(ious: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
  """(NoC (n,), failed (n,) bool) from (n, N + 1) IoUs of rounds 0..N.

  NoC = the first round r with IoU >= threshold (0 when the start already
  reaches it); N when no round does (RITM's cap), which is a failure.
  """
  reached = ious >= threshold
  n = ious.shape[1] - 1
  failed = ~reached.any(axis=1)
  return np.where(failed, n, np.argmax(reached, axis=1)), failed


def noc_metrics(rows: Sequence[dict], starts: Sequence[str], num_rounds: int) -> dict:
  """noc.json's metrics (see the module docstring) from clicks.csv rows."""
  ids = sorted({r["id"] for r in rows})
  per_start, per_image = {}, {}
  for start in starts:
    ious = iou_table(rows, start, ids, num_rounds)
    entry = {"num_images": len(ids)}
    per_image[start] = {}
    for t in THRESHOLDS:
      noc, failed = number_of_clicks(ious, t)
      name = f"{round(100 * t)}"
      entry[f"noc@{name}"] = float(noc.mean()) if len(ids) else float("nan")
      entry[f"nof@{name}"] = int(failed.sum())
      per_image[start][f"noc@{name}"] = dict(zip(ids, noc.astype(int).tolist()))
    for k in MIOU_AT:
      if k <= num_rounds:
        entry[f"miou@{k}"] = float(np.nanmean(ious[:, k])) if len(ids) else float("nan")
    entry["miou_curve"] = (np.nanmean(ious, axis=0).tolist() if len(ids)
                           else [float("nan")] * (num_rounds + 1))
    per_start[start] = entry
  tests = {}
  for a, b in itertools.combinations(starts, 2):
    for t in THRESHOLDS:
      name = f"noc@{round(100 * t)}"
      tests[f"{a} vs {b}: {name}"] = wilcoxon_signed_rank(
          np.array([per_image[a][name][i] for i in ids], float),
          np.array([per_image[b][name][i] for i in ids], float))
  return {"num_rounds": num_rounds, "starts": list(starts), "num_images": len(ids),
          "thresholds": list(THRESHOLDS), "per_start": per_start, "wilcoxon": tests,
          "per_image": per_image}


def render_table(dataset: str, noc: dict) -> str:
  """table.md: NoC / NoF / mIoU per start, and the clicks saved vs `box`."""
  n, starts = noc["num_rounds"], noc["starts"]
  miou = [k for k in MIOU_AT if k <= n]
  lines = [f"# {dataset}: clicks to reach an IoU ({noc['num_images']} images, "
           f"N = {n} rounds)", "",
           "| Start | NoC@85 ↓ | NoC@90 ↓ | NoF@85 ↓ | NoF@90 ↓ | "
           + " | ".join(f"mIoU@{k}" for k in miou) + " |",
           "|---" * (5 + len(miou)) + "|"]
  for s in starts:
    e = noc["per_start"][s]
    lines.append(f"| {s} | {e['noc@85']:.2f} | {e['noc@90']:.2f} | {e['nof@85']} | "
                 f"{e['nof@90']} | " + " | ".join(f"{100 * e[f'miou@{k}']:.1f}" for k in miou)
                 + " |")
  if "box" in starts and "simsam" in starts:
    b, s = noc["per_start"]["box"], noc["per_start"]["simsam"]
    lines += ["", "Clicks SimSAM saves over SAM (box start): "
              f"{b['noc@85'] - s['noc@85']:+.2f} to 85% IoU, "
              f"{b['noc@90'] - s['noc@90']:+.2f} to 90% IoU "
              f"(Wilcoxon p = {noc['wilcoxon']['box vs simsam: noc@85']['p_value']:.3g} / "
              f"{noc['wilcoxon']['box vs simsam: noc@90']['p_value']:.3g})."]
  lines += ["", "NoC: clicks until IoU >= 0.85 / 0.90 (0 if the start reaches it, N if "
            "never); NoF: images that never do; mIoU@k: mean IoU after k clicks (%)."]
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


def curves_figure(noc: dict, title: str) -> Image.Image:
  """mIoU vs number of clicks, one curve per start."""
  n = noc["num_rounds"]
  series = [(s, list(range(n + 1)), noc["per_start"][s]["miou_curve"]) for s in noc["starts"]]
  return line_chart(series, title, "clicks", "mIoU", xlim=(0, n), hlines=THRESHOLDS)


def panels_figure(prepared: protocols.PreparedExample, outputs: dict) -> Image.Image:
  """One row per start: the prediction after 0, 1, 2, 3, 5, 10, N clicks."""
  h, w = prepared.image.shape[:2]
  rows = []
  for start, out in outputs.items():
    n = out["clicks"].shape[0]
    rounds = sorted({r for r in PANEL_ROUNDS if r < n} | {n})
    row = []
    for r in rounds:
      box = prepared.box if start != "clicks_only" else None
      clicked = out["labels"][:r] >= 0  # rounds without error have no click
      img = overlay.draw_overlay(prepared.image, out["masks"][r], box,
                                 out["clicks"][:r][clicked], out["labels"][:r][clicked])
      row.append((f"{start} {r}: IoU {out['iou'][r]:.2f}", img))
    rows.append(row)
  cols = max(len(r) for r in rows)
  sheet = Image.new("RGB", (cols * w, len(rows) * (h + 14)), (0, 0, 0))
  draw = ImageDraw.Draw(sheet)
  for i, row in enumerate(rows):
    for j, (title, img) in enumerate(row):
      sheet.paste(Image.fromarray(img), (j * w, i * (h + 14) + 14))
      draw.text((j * w + 2, i * (h + 14) + 1), title, fill=(255, 255, 255))
  return sheet


def _png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


def _check_ground_truth(examples: Sequence[dict], config: ConfigDict) -> None:
  """EvaluationError unless every example has a non-empty ground-truth mask."""
  for e in examples:
    mask = e.get("mask")
    if mask is None:
      raise ev.EvaluationError(f"--config.dataset={config.dataset}: examples have no "
                               "ground-truth mask; the click protocol needs one")
    if not np.any(np.asarray(mask)) and config.on_bad_example != "skip":
      raise ev.EvaluationError(
          f"{e.get('image_file', e['id'])}: empty ground-truth mask; the click protocol "
          "needs an object (use --config.on_bad_example=skip to leave such images out)")


def _image_rows(example_id: str, out: dict) -> list[dict]:
  rows = []
  for start, o in out.items():
    n = o["clicks"].shape[0]
    for r in range(n + 1):
      x, y, label = (-1, -1, -1) if r == 0 else (*o["clicks"][r - 1], o["labels"][r - 1])
      rows.append({"id": example_id, "start": start, "round": r, "x": int(x), "y": int(y),
                   "label": int(label), "iou": ev._fmt(float(o["iou"][r])),
                   "dsc": ev._fmt(float(o["dsc"][r]))})
  return rows


def run(config: ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the interactive evaluation; returns noc.json's content."""
  protocol_config = interactive_config(config)
  try:
    protocol = protocols.get_protocol(config.protocol)
  except ValueError as e:
    raise ev.EvaluationError(f"--config.protocol: {e}") from None
  if not config.data_dir:
    raise ev.EvaluationError("--config.data_dir is required (where the TFDS dataset is built)")
  if int(config.batch_size) < 1:
    raise ev.EvaluationError(f"--config.batch_size={config.batch_size} must be >= 1")
  ev.initialize_distributed(config.distributed)
  shard_index, num_shards = ev.resolve_shard(config)
  with ev.owned_workdir(workdir, (shard_index, num_shards)):
    return _run_owned(config, workdir, progress, protocol_config, protocol, shard_index,
                      num_shards)


def _run_owned(config: ConfigDict, workdir: str, progress: bool, protocol_config,
               protocol, shard_index: int, num_shards: int) -> dict[str, Any]:
  """`run` once the workdir (or the shard) is this process's."""
  ev.check_workdir(workdir, config, RESULT_KEYS)
  model, checkpoint = ev.load_sam_model(config.checkpoint, config.get("precision", "float32"),
                                        config.get("attention_impl", "xla"))
  if checkpoint.get("profile", "sam") != "sam" or config.get("profile"):
    raise ev.EvaluationError(
        "--config.profile / a checkpoint profile other than sam: the click protocol "
        "supports SAM's preprocessing only")
  examples, skipped = ev.load_examples(config)
  _check_ground_truth(examples, config)
  engine = InteractiveSam(model, protocol_config)
  ev.record_config(workdir, config)

  starts, n = protocol_config.starts, protocol_config.num_rounds
  per_image = len(starts) * (n + 1)
  csv_path, skipped_path = ev.shard_files(workdir, shard_index, num_shards, CLICKS_CSV)
  rows = ev.merged_rows(workdir, own=csv_path, name=CLICKS_CSV, key_fields=ROW_KEY)
  have = {tuple(r[k] for k in ROW_KEY) for r in rows}
  count = {}
  for r in rows:
    count[r["id"]] = count.get(r["id"], 0) + 1
  figure_ids = {e["id"] for e in examples[:int(config.num_figures)]}
  todo = [e for e in examples[shard_index::num_shards]
          if count.get(e["id"], 0) < per_image
          or (e["id"] in figure_ids
              and not os.path.exists(os.path.join(workdir, "figures", f"{e['id']}.png")))]
  writer = ev.RowWriter(csv_path, CLICK_FIELDS)
  bad = []
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=len(todo), desc=f"{config.dataset}/{config.split} clicks", unit="img")
  try:
    batch = int(config.batch_size)
    for chunk_start in range(0, len(todo), batch):
      prepared = []
      for example in todo[chunk_start:chunk_start + batch]:
        try:
          p = protocols.prepare(example, protocol, config.dataset)
          if not p.mask.any():
            raise ValueError("empty ground-truth mask")
          prepared.append(p)
        except (ValueError, DatasetError) as e:
          if config.on_bad_example != "skip":
            raise ev.EvaluationError(f"{example.get('image_file', example['id'])}: {e}") from None
          bad.append({"id": example["id"], "file": example.get("image_file"), "reason": str(e)})
      # Images of one size share a compiled program and run as one batch.
      groups = {}
      for p in prepared:
        pixels, info = processing.preprocess(p.image, model.config.image_size)
        groups.setdefault(info, []).append((p, pixels))
      for info, group in groups.items():
        outs = engine.run_batch(
            np.stack([px for _, px in group]), np.stack([p.box for p, _ in group]),
            np.stack([p.mask for p, _ in group]), info,
            keys=jax.numpy.stack([ev.image_key(int(config.seed), p.id) for p, _ in group]),
            devices=jax.local_devices())
        outs = {s: {k: np.asarray(v) for k, v in vars(o).items()} for s, o in outs.items()}
        new_rows = []
        for i, (p, _) in enumerate(group):
          mine = {s: {k: v[i] for k, v in o.items()} for s, o in outs.items()}
          new_rows += [row for row in _image_rows(p.id, mine)
                       if (row["id"], row["start"], str(row["round"])) not in have]
          if p.id in figure_ids:
            ev.write_atomic(os.path.join(workdir, "figures", f"{p.id}.png"),
                            _png(panels_figure(p, mine)))
        writer.write(new_rows)
        rows.extend({k: str(v) for k, v in row.items()} for row in new_rows)
        if bar is not None:
          bar.update(len(group))
  finally:
    writer.close()
    if bar is not None:
      bar.close()
    if skipped_path is not None:
      ev.write_atomic(skipped_path, json.dumps(bad, indent=1))

  if num_shards > 1 or os.path.isdir(os.path.join(workdir, "shards")):
    rows = ev.merged_rows(workdir, name=CLICKS_CSV, key_fields=ROW_KEY)
    bad_ids = {b["id"] for b in bad + ev.merged_skipped(workdir)}
    count = {}
    for r in rows:
      count[r["id"]] = count.get(r["id"], 0) + 1
    missing = [e["id"] for e in examples
               if e["id"] not in bad_ids and count.get(e["id"], 0) < per_image]
    if missing:
      logging.info("shard %d of %d done; %d images of other shards missing",
                   shard_index, num_shards, len(missing))
      return {"complete": False, "shard": [shard_index, num_shards],
              "missing_images": len(missing)}
    ev.write_rows(os.path.join(workdir, CLICKS_CSV), rows, starts, CLICK_FIELDS,
                  column="start", extra_key=lambda r: int(r["round"]))

  ids = {e["id"] for e in examples}
  rows = [r for r in rows if r["id"] in ids and r["start"] in starts]
  noc = noc_metrics(rows, starts, n)
  results = {"complete": True, "dataset": config.dataset,
             "builder_config": config.builder_config, "split": config.split, **noc,
             "skipped": {"while_building": skipped, "while_evaluating": bad},
             "checkpoint": checkpoint, "config": ev._config_dict(config),
             "software": ev.software_versions(),
             "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
  ev.write_atomic(os.path.join(workdir, "noc.json"),
                  json.dumps(ev._clean(results), indent=2, default=ev._json_default,
                             allow_nan=False))
  ev.write_atomic(os.path.join(workdir, "table.md"), render_table(config.dataset, noc))
  title = f"{config.dataset}/{config.split}: mIoU vs clicks ({checkpoint['spec']})"
  if checkpoint.get("random_weights"):
    title += " RANDOM WEIGHTS"
  ev.write_atomic(os.path.join(workdir, "figures", "miou_vs_clicks.png"),
                  _png(curves_figure(noc, title)))
  return results


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config is None or not workdir:
    print("simsam_jax.interactive: error: --config and --workdir are required",
          file=sys.stderr)
    return 1
  with console.session(workdir, "interactive"):
    try:
      results = run(config, workdir)
    except (ev.EvaluationError, DatasetError) as e:
      print(f"simsam_jax.interactive: error: {e}", file=sys.stderr)
      return 1
    if not results["complete"]:
      print(f"Shard {results['shard'][0]} of {results['shard'][1]} done; "
            f"{results['missing_images']} images of other shards are not done yet.")
      return 0
    with open(os.path.join(workdir, "table.md")) as f:
      print(f.read())
    if results["checkpoint"].get("random_weights"):
      print("RANDOM WEIGHTS: the masks, and every number above, are meaningless; use a "
            "converted checkpoint (--config.checkpoint=checkpoints/sam_vit_b).")
    print(f"Wrote {workdir}. {console.where_logs_went()}".rstrip())
  return 0


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Interactive-evaluation config file.")
  flags.DEFINE_string("workdir", None, "Output folder (resumable).")
  app.run(lambda argv: sys.exit(main(argv)))
