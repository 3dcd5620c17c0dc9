"""The PyTorch anchors the benchmarks time beside simsam_jax, on the same device.

Three SimSAM data flows on Hugging Face `SamModel` (random weights of the
same architecture as the JAX model; timing does not depend on the values):

* `authors` (a): the published flow — float32, eager attention, the image
  embedding repeated K times for the K re-decodes, post-processing, top-K
  click selection and labels on the host (NumPy), IoU aggregation on the
  device.
* `authors_bf16` (b): the same under `torch.autocast(dtype=torch.bfloat16)`.
* `strong` (c): the strongest PyTorch flow we know — SDPA attention, bf16
  weights, `torch.compile` on the vision encoder, the K prompts as ONE point
  batch on one embedding, and every step (post-processing, top-K, labels,
  aggregation) on the device with no host round trip.

Each flow exposes `encode()`, `sam()` (encode + box-only decode + mask at
the input size) and `simsam(k)` (returns the chosen index), all blocking
until the device is done, plus `sam_batch(b)` / `simsam_batch(b, k)` for
throughput (B images per call; the authors' flows loop over the images, as
the published evaluation does).
"""

from __future__ import annotations

import contextlib

import numpy as np

FLOWS = ("authors", "authors_bf16", "strong")


def hf_model(config, attn: str = "eager"):
  """An HF `SamModel` with random weights and the architecture of `config`
  (a `simsam_jax.modeling.SamConfig`; `checkpoint.hf_sam_config`)."""
  from transformers import SamModel

  from simsam_jax.checkpoint import hf_sam_config
  return SamModel._from_config(hf_sam_config(config), attn_implementation=attn).eval()


def torch_device():
  import torch
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize():
  import torch
  if torch.cuda.is_available():
    torch.cuda.synchronize()


class Flow:
  """One PyTorch SimSAM flow on fixed inputs.

  Args:
    name: one of `FLOWS`.
    config: the `SamConfig` of the JAX model (same architecture).
    pixels: (B, S, S, 3) float32 pre-processed images (`processing.preprocess`).
    boxes: (B, 4) float32 boxes in original-image pixels.
    info: the `processing.ImageInfo` shared by the B images.
    compile_encoder: `torch.compile` the vision encoder of the `strong` flow;
      None = only on a GPU (Inductor's CPU compile of ViT-B takes minutes).
  """

  def __init__(self, name: str, config, pixels: np.ndarray, boxes: np.ndarray, info,
               compile_encoder=None):
    import torch
    if name not in FLOWS:
      raise ValueError(f"unknown PyTorch flow {name!r}; known: {', '.join(FLOWS)}")
    self.name = name
    self.device = torch_device()
    self.config = config
    self.info = info
    strong = name == "strong"
    model = hf_model(config, attn="sdpa" if strong else "eager").to(self.device)
    self.dtype = torch.bfloat16 if strong else torch.float32
    if compile_encoder is None:
      compile_encoder = self.device.type == "cuda"
    self.compiled = bool(strong and compile_encoder)
    if strong:
      model = model.to(torch.bfloat16)
      if self.compiled:
        model.vision_encoder = torch.compile(model.vision_encoder)
    self.model = model
    self.autocast = (
        (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16))
        if name == "authors_bf16" else contextlib.nullcontext)
    h, w = info.original_size
    rh, rw = info.resized_size
    self.scale = np.array([rw / w, rh / h] * 2, np.float32)
    self.pixels = torch.from_numpy(np.ascontiguousarray(
        np.asarray(pixels, np.float32).transpose(0, 3, 1, 2))).to(self.device, self.dtype)
    self.boxes = torch.from_numpy(np.asarray(boxes, np.float32) * self.scale).to(
        self.device, self.dtype)

  # -- building blocks -------------------------------------------------------

  def _embed(self, pixels):
    import torch
    with torch.no_grad(), self.autocast():
      return self.model.get_image_embeddings(pixels)

  def _first(self, emb, box):
    import torch
    with torch.no_grad(), self.autocast():
      out = self.model(image_embeddings=emb, input_boxes=box[None, None],
                       multimask_output=False)
    return out.pred_masks[0, 0, 0].float()  # (M, M) low-res logits

  def _probs(self, low):
    """Low-res logits -> probabilities at the original size (SAM's round trip)."""
    import torch
    import torch.nn.functional as F
    s, (rh, rw), (h, w) = self.config.image_size, self.info.resized_size, self.info.original_size
    x = F.interpolate(low[None, None], (s, s), mode="bilinear", align_corners=False)
    x = F.interpolate(x[..., :rh, :rw], (h, w), mode="bilinear", align_corners=False)
    return torch.sigmoid(x)[0, 0]

  def _mask_prompt(self, probs):
    import torch.nn.functional as F
    m = self.config.mask_input_size
    prompt = (probs > 0.5).to(self.dtype)[None, None]
    if prompt.shape[-2:] != (m, m):  # the published flow works at 256 x 256
      prompt = F.interpolate(prompt.float(), (m, m), mode="nearest").to(self.dtype)
    return prompt

  def _aggregate(self, cand):
    import torch
    b = (cand > 0).flatten(1).float()
    inter = b @ b.T
    area = b.sum(1)
    iou = torch.nan_to_num(inter / (area[:, None] + area[None, :] - inter), nan=0.0)
    return torch.argmax(iou.mean(1))

  def _simsam_one(self, emb, box, k):
    import torch
    low = self._first(emb, box)
    probs = self._probs(low)
    w = self.info.original_size[1]
    if self.name == "strong":  # everything on the device
      err = (0.5 - (probs - 0.5).abs()).flatten()
      idx = torch.topk(err, k).indices
      labels = 1 - (probs.flatten()[idx] > 0.5).long()
      scale = torch.as_tensor(self.scale[:2], device=self.device)
      pts = torch.stack([idx % w, idx // w], 1).to(torch.float32) * scale
      with torch.no_grad():
        out = self.model(image_embeddings=emb,
                         input_points=pts.to(self.dtype)[None, :, None],
                         input_labels=labels[None, :, None],
                         input_boxes=box[None, None].repeat(1, k, 1),
                         input_masks=self._mask_prompt(probs),
                         multimask_output=False)
      return self._aggregate(out.pred_masks[0, :, 0])
    # The published flow: clicks on the host, the embedding repeated K times.
    p = probs.cpu().numpy()
    err = 0.5 - np.abs(p - 0.5)
    idx = np.argsort(-err.ravel(), kind="stable")[:k]
    labels = 1 - (p.ravel()[idx] > 0.5).astype(np.int64)
    pts = np.stack([idx % w, idx // w], 1).astype(np.float32) * self.scale[:2]
    with torch.no_grad(), self.autocast():
      out = self.model(image_embeddings=emb.repeat(k, 1, 1, 1),
                       input_points=torch.from_numpy(pts).to(self.device)[:, None, None],
                       input_labels=torch.from_numpy(labels).to(self.device)[:, None, None],
                       input_boxes=box[None, None].repeat(k, 1, 1),
                       input_masks=self._mask_prompt(probs).repeat(k, 1, 1, 1),
                       multimask_output=False)
    return int(self._aggregate(out.pred_masks[:, 0, 0]))

  # -- timed entry points ----------------------------------------------------

  def encode(self):
    emb = self._embed(self.pixels[:1])
    synchronize()
    return emb

  def sam(self):
    emb = self._embed(self.pixels[:1])
    mask = self._probs(self._first(emb[:1], self.boxes[0])) > 0.5
    synchronize()
    return mask

  def simsam(self, k: int):
    emb = self._embed(self.pixels[:1])
    chosen = self._simsam_one(emb[:1], self.boxes[0], k)
    synchronize()
    return chosen

  def simsam_batch(self, k: int):
    """SAM and SimSAM on all B images (throughput); returns the chosen indices."""
    if self.name == "strong":  # one batched encoder call
      embs = self._embed(self.pixels)
      chosen = [self._simsam_one(embs[i:i + 1], self.boxes[i], k)
                for i in range(len(self.pixels))]
    else:  # image by image, as the published evaluation loop
      chosen = [self._simsam_one(self._embed(self.pixels[i:i + 1]), self.boxes[i], k)
                for i in range(len(self.pixels))]
    synchronize()
    return chosen
