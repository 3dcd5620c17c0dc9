r"""Evaluation throughput: SAM + SimSAM over N generated images, batched.

  python benchmarks/throughput.py                              # vit_b, N=64, B=16, K=50
  python benchmarks/throughput.py --preset=tiny_1024 --num_images=8 --batch=4 --ks=3

Not a test: times a full evaluation-equivalent pass through the evaluation's
own batch runner (`simsam_jax.evaluation.runner`: SAM pre-processing in
background threads, SAM and SimSAM with DSC / IoU in one compiled program
per batch, NSD on the host)
over `--num_images` deterministic 256 x 256 phantoms (the paper's protocol,
a 1024 x 1024 model input), `--batch` images per device call, and reports
images per second and the device-idle fraction:

  idle = 1 - (number of batches x median device time of one batch) / wall time

where the device time of a batch is measured on inputs already on the device.
Host work overlaps device work as in `simsam_jax.evaluate`: `grain` threads
prepare the next images, one batch stays in flight while the previous one is
fetched, and a thread pool computes NSD (DeepMind's `surface-distance`).

In the same run and on the same device, the PyTorch anchors of
`torch_flows.py` evaluate the same images (SimSAM, which includes SAM's
box-only mask): (a) the authors' flow, (b) it under bf16 autocast, (c) the
strongest PyTorch flow we know. Ratios are printed against each.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simsam_jax import processing, synthetic  # noqa: E402
from simsam_jax.data import protocols  # noqa: E402
from simsam_jax.evaluation import DEFAULT_POLICY  # noqa: E402
from simsam_jax.evaluation import metrics as metrics_lib  # noqa: E402
from simsam_jax.evaluation import runner as runner_lib  # noqa: E402
from simsam_jax.modeling import build_sam, get_preset  # noqa: E402
from simsam_jax.simsam import SimSamConfig  # noqa: E402
from timing import timed  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "vit_b", "SAM preset.")
_N = flags.DEFINE_integer("num_images", 64, "Number of generated images.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per device call (all local devices).")
_KS = flags.DEFINE_list("ks", ["50"], "Values of K.")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"],
                               "Compute precision of the JAX model.")
_SIZE = flags.DEFINE_integer("size", 256, "Side of the generated images.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions of one device batch.")
_TORCH = flags.DEFINE_list("torch_flows", ["authors", "authors_bf16", "strong"],
                           "PyTorch flows to time (empty: none).")
_TORCH_IMAGES = flags.DEFINE_integer(
    "torch_images", 0, "Images the PyTorch flows evaluate (0: the same as JAX).")


def images(n: int, size: int):
  """N deterministic phantoms: (image uint8 (H, W, 3), mask bool, box (4,))."""
  return [synthetic.phantom(size, size, seed=i) for i in range(n)]


def prepared(data):
  """The phantoms as the evaluation's prepared examples, with their ids."""
  return [(dict(id=f"phantom_{i:05d}"), protocols.PreparedExample(
      id=f"phantom_{i:05d}", image=img, mask=gt, box=np.asarray(box, np.float32),
      spacing=(1.0, 1.0), original_size=gt.shape, file_names=()))
          for i, (img, gt, box) in enumerate(data)]


def jax_pass(runner: runner_lib.BatchRunner, entries, image_size: int):
  """One evaluation pass as `simsam_jax.evaluate` runs it.

  Background `grain` threads prepare images (SAM pre-processing, keys), one
  batch stays in flight on the device while the previous one is fetched, and
  a thread pool computes NSD. Returns (wall s, number of batches, mean DSC
  of SAM and SimSAM).
  """
  pool = concurrent.futures.ThreadPoolExecutor(max(2, os.cpu_count() or 2))
  futures, dsc = [], []
  start = time.perf_counter()

  def consume(handle):
    for item, result in zip(handle[0], runner.fetch(handle)):
      dsc.append((result["sam"]["dsc"], result["simsam"]["dsc"]))
      for method in ("sam", "simsam"):
        futures.append(pool.submit(metrics_lib.nsd, result[method]["mask"],
                                   item.prepared.mask))

  by_id = {example["id"]: p for example, p in entries}
  loader = runner_lib.prefetch(entries, lambda example: by_id[example["id"]], image_size,
                               seed=0)
  in_flight, num_batches = None, 0
  for group in runner_lib.batches(loader, runner.batch_size):
    handle = runner.dispatch(group)
    num_batches += 1
    if in_flight is not None:
      consume(in_flight)
    in_flight = handle
  consume(in_flight)
  for f in futures:
    f.result()
  wall = time.perf_counter() - start
  pool.shutdown()
  return wall, num_batches, np.nanmean(np.array(dsc), axis=0)


def device_batch_ms(runner: runner_lib.BatchRunner, entries, image_size: int, repeats: int):
  """Median ms of one full batch on the device (inputs prepared, results fetched)."""
  by_id = {example["id"]: p for example, p in entries}
  items = list(runner_lib.prefetch(entries[:runner.batch_size],
                                   lambda example: by_id[example["id"]], image_size, seed=0))
  items = (items * runner.batch_size)[:runner.batch_size]
  t = timed(lambda: runner.fetch(runner.dispatch(items)), repeats)
  return t["median_s"] * 1e3, t["first_s"]


def torch_pass(name: str, config, data, batch: int, k: int):
  """img/s of a PyTorch flow over `data` (batches of `batch` images)."""
  import torch_flows
  pre = [processing.preprocess(img, config.image_size) for img, _, _ in data]
  info = pre[0][1]
  flows = []
  for start in range(0, len(data), batch):
    sl = slice(start, start + batch)
    flows.append(torch_flows.Flow(name, config, np.stack([p for p, _ in pre[sl]]),
                                  np.stack([b for _, _, b in data[sl]]), info))
  flows[0].simsam_batch(k)  # warm-up (and torch.compile for `strong`)
  start = time.perf_counter()
  for flow in flows:
    flow.simsam_batch(k)
  return len(data) / (time.perf_counter() - start)


def main(argv):
  del argv
  config = get_preset(_PRESET.value)
  n, batch = _N.value, _BATCH.value
  if batch <= 0 or batch % jax.local_device_count():
    raise app.UsageError(f"--batch={batch} must be a positive multiple of the "
                         f"{jax.local_device_count()} local devices")
  if n <= 0:
    raise app.UsageError(f"--num_images={n} must be positive")
  data = images(n, _SIZE.value)
  dev = jax.devices()[0]
  print(f"# simsam_jax throughput: preset {_PRESET.value}, {n} images "
        f"{_SIZE.value}x{_SIZE.value} -> {config.image_size}, batch {batch}, "
        f"precision {_PRECISION.value}")
  print(f"# jax {jax.__version__} on {dev.platform} ({dev.device_kind}), "
        f"{jax.local_device_count()} device(s); host {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs")
  model = build_sam(config, seed=0, dtype=_PRECISION.value)
  entries = prepared(data)
  have_torch = (importlib.util.find_spec("torch") is not None
                and importlib.util.find_spec("transformers") is not None)
  print("\n| K | JAX img/s | batch ms (device) | device idle | SAM DSC | SimSAM DSC |"
        + "".join(f" {f} img/s | JAX speed-up vs {f} |" for f in _TORCH.value if have_torch))
  print("|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * (len(_TORCH.value) * have_torch))
  for k in (int(k) for k in _KS.value):
    runner = runner_lib.BatchRunner(model, {"sam": None, "simsam": SimSamConfig(k=k)},
                                    batch, DEFAULT_POLICY)
    batch_ms, compile_s = device_batch_ms(runner, entries, config.image_size,
                                          _REPEATS.value)
    jax_pass(runner, entries[:batch], config.image_size)  # warm the host path
    wall, num_batches, (sam_dsc, simsam_dsc) = jax_pass(runner, entries, config.image_size)
    ips = n / wall
    idle = max(0.0, 1.0 - num_batches * batch_ms / 1e3 / wall)
    row = (f"| {k} | {ips:.1f} | {batch_ms:.1f} | {100 * idle:.0f}% | "
           f"{100 * sam_dsc:.1f} | {100 * simsam_dsc:.1f} |")
    if have_torch:
      torch_data = data[:_TORCH_IMAGES.value or n]
      for flow in _TORCH.value:
        tips = torch_pass(flow, config, torch_data, batch, k)
        row += f" {tips:.1f} | {ips / tips:.2f} |"
    print(row)
    print(f"# K={k}: compilation {compile_s:.1f} s (not in the figures)")


if __name__ == "__main__":
  app.run(main)
