"""`Predictor`: SAM and SimSAM from Python, shaped like `SamPredictor`.

    from simsam_jax import Predictor
    predictor = Predictor.load("random:tiny")   # or a converted folder, a .pth ...
    predictor.set_image(image)                  # (H, W, 3) uint8: encoded once
    masks, iou_predictions, low_res_logits = predictor.predict(box=[x0, y0, x1, y1])
    output = predictor.simsam(box=[x0, y0, x1, y1], k=50)   # a SimSamOutput

`Predictor.load(spec, precision=, profile=, attention_impl=)` resolves the
spec with `simsam_jax.checkpoint.resolve` (a converted folder,
`random:PRESET[:SEED]`, an official `.pth`, a `model.safetensors` or a
Hugging Face folder, the last three converted in memory). `set_image` keeps
the image embedding and geometry; `predict` and `simsam` reuse them.
`predict_batch` / `simsam_batch` run many images, batched (`jax.vmap`) and
sharded over the local devices (`simsam.engine.data_parallel`, the engine's
machinery), one program per image geometry.

Compilation: the model state is a jit argument; `predict` compiles one
program per (image geometry, prompt signature (box or not, number of points,
mask input or not), multimask) and `simsam` one per (image geometry,
`SimSamConfig`); calls with the same shapes reuse them.

Differences from `segment_anything.SamPredictor.predict`, each deliberate:
  * Keyword arguments `box`, `points`, `point_labels`, `mask_input`,
    `multimask` instead of `point_coords`, `box`, `mask_input`,
    `multimask_output`; `multimask` defaults to False (SamPredictor: True),
    as the `segment` command does.
  * Point labels are 1 (positive) or 0 (negative) only; a box has x0 <= x1,
    y0 <= y1 and every prompt lies on the image. These are checked before any
    work, with `segment`'s messages (which name its flags, `--box`,
    `--point`), and raise `PredictorError` (a ValueError).
  * `return_logits` is not offered: `low_res_logits` are returned always and
    `processing.postprocess_logits` upscales them.
  * The masks are the preprocessing profile's decision (`profiles`; for
    "sam" exactly `upscaled logits > 0` as SamPredictor; "medsam" follows
    MedSAM).
  * Masks come back as numpy arrays: (C, H, W) bool, (C,) float32 and
    (C, M, M) float32 (M = 256 for the 1024 presets); no batch axis.

The `segment` command is a thin CLI over `Predictor`: `load_sam` (a
`LoadedSam`: compiled entry points, state, provenance) builds the model and
`Predictor.predict_timed` / `simsam_timed` run the same computations as
`predict` / `simsam` stage by stage, compiled ahead of time, so that the
command can report per-stage timings.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from simsam_jax import processing, profiles, prompts
from simsam_jax.checkpoint.resolve import CheckpointSpecError, resolve_checkpoint
from simsam_jax.modeling import Policy, SamConfig, SamFunctions, make_sam_functions
from simsam_jax.modeling.policy import policy_from_flags
from simsam_jax.prompts import Box, Point, PredictorError
from simsam_jax.simsam import SimSam, SimSamConfig, SimSamOutput
from simsam_jax.simsam.engine import StateReplicas, data_parallel


@dataclasses.dataclass(frozen=True)
class LoadedSam:
  """A ready SAM: compiled entry points, weights and provenance.

  Attributes:
    fns: `make_sam_functions` output (jitted `encode` / `decode`).
    state: the model's `nnx.State`, passed to `fns`.
    config: the architecture.
    description: JSON-ready provenance (`checkpoint.resolve`), plus the
      profile it runs under once `with_profile` is applied.
    simsam_engines: `simsam_engine`'s cache, {SimSamConfig: SimSam}, so
      that repeated runs with one configuration compile once.
    policy: compute precision and attention implementation of `fns`.
  """
  fns: SamFunctions
  state: Any
  config: SamConfig
  description: dict
  policy: Policy = Policy()
  simsam_engines: dict = dataclasses.field(default_factory=dict,
                                           compare=False, repr=False)


def parse_policy(precision: Optional[str] = None,
                 attention_impl: Optional[str] = None) -> Policy:
  """`--precision` and `--attention_impl` (None: the defaults) -> Policy.

  Raises:
    PredictorError: naming the flag for an unknown value or an unusable
      combination (cudnn without bfloat16 or without a GPU).
  """
  try:
    return policy_from_flags(precision, attention_impl)
  except ValueError as error:
    raise PredictorError(str(error)) from None


def load_sam(spec: str, policy: Policy = Policy()) -> LoadedSam:
  """Loads SAM from a `--checkpoint` value (`checkpoint.resolve`).

  Args:
    spec: a converted checkpoint folder, `random:PRESET[:SEED]`, an official
      `.pth`, a `model.safetensors` or a Hugging Face folder (the last three
      converted in memory).
    policy: compute precision and attention implementation
      (`parse_policy`); the weights are float32 either way.

  Raises:
    PredictorError: naming --checkpoint for an unusable spec.
  """
  try:
    model, description = resolve_checkpoint(spec, policy)
  except CheckpointSpecError as error:
    raise PredictorError(str(error)) from None
  fns, state = make_sam_functions(model, dtype=policy.precision,
                                  attention_impl=policy.attention_impl)
  return LoadedSam(fns=fns, state=state, config=model.config,
                   description=description, policy=policy)


def sam_profile(sam: LoadedSam) -> profiles.Profile:
  """The preprocessing profile `sam` runs under (`description["profile"]`)."""
  return profiles.get(sam.description.get("profile", profiles.DEFAULT_PROFILE))


def with_profile(sam: LoadedSam, override: Optional[str]) -> LoadedSam:
  """`sam` under its checkpoint's profile, or under `--profile=override`.

  The description records `profile` and `profile_source` ("checkpoint",
  "flag", or "default" for random weights); an override that differs from
  the checkpoint's profile is logged as a warning. The compiled engines are
  shared.

  Raises:
    PredictorError: naming --profile for an unregistered name.
  """
  recorded = sam.description.get("recorded_profile",
                                 sam.description.get("profile",
                                                     profiles.DEFAULT_PROFILE))
  try:
    name, source = profiles.resolve(recorded, override)
  except ValueError as error:
    raise PredictorError(f"--checkpoint={sam.description['spec']!r}: {error}"
                         if override is None else str(error)) from None
  if source == "checkpoint" and sam.description.get("random_weights"):
    source = "default"
  description = {**sam.description, "profile": name, "profile_source": source,
                 "recorded_profile": recorded}
  return dataclasses.replace(sam, description=description)


def simsam_engine(sam: LoadedSam, config: SimSamConfig) -> SimSam:
  """The `SimSam` engine over `sam`'s weights for `config`, cached in `sam`.

  Args:
    sam: the model (`load_sam`); its arrays are shared, not copied.
    config: a validated `SimSamConfig`.

  Returns:
    The same engine object for equal configurations, so that its jitted
    functions (fused `run` and `stages`) compile once per image size.
  """
  engine = sam.simsam_engines.get(config)
  if engine is None:
    engine = SimSam(nnx.merge(sam.fns.graphdef, sam.state), config)
    sam.simsam_engines[config] = engine
  return engine


@dataclasses.dataclass(frozen=True)
class SamResult:
  """What one SAM prediction produced.

  Attributes:
    mask: (H, W) bool at the input image's resolution, the chosen mask's
      logits > 0.
    low_res_logits: (K, M, M) float32 logits of all K returned masks, M the
      decoder's output side (4 x the embedding grid).
    iou_predictions: (K,) float32 predicted IoUs.
    chosen_index: index in [0, K) of the written mask (highest predicted IoU;
      0 when K = 1).
    info: the `processing.ImageInfo` of the image.
    model_box: (4,) float32 box in the model frame, or None.
    model_points: (N, 2) float32 points in the model frame, or None.
    timings_ms: wall milliseconds of preprocess, encode, decode, postprocess
      (compiled code only).
    compile_ms: wall milliseconds spent compiling encode, decode and
      postprocess (postprocess: one warm-up call on zeros).
  """
  mask: np.ndarray
  low_res_logits: np.ndarray
  iou_predictions: np.ndarray
  chosen_index: int
  info: processing.ImageInfo
  model_box: Optional[np.ndarray]
  model_points: Optional[np.ndarray]
  timings_ms: dict
  compile_ms: dict


def _timed(function: Callable, *args) -> Tuple[Any, float]:
  """Runs `function(*args)`, waits for its arrays; returns (result, ms)."""
  start = time.perf_counter()
  result = jax.block_until_ready(function(*args))
  return result, (time.perf_counter() - start) * 1e3


def model_prompts(box: Optional[Box], points: Sequence[Point],
                  info: processing.ImageInfo
                  ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray],
                             Optional[np.ndarray]]:
  """Maps input-image prompts to the decoder's (B=1, P=1) model-frame arrays.

  Args:
    box: (x0, y0, x1, y1) input-image pixels, or None.
    points: (x, y, label) tuples in input-image pixels, possibly empty.
    info: sizes from `processing.preprocess`.

  Returns:
    boxes: (1, 1, 4) float32 model-frame box, or None.
    point_coords: (1, 1, N, 2) float32 model-frame (x, y), or None.
    point_labels: (1, 1, N) int32 in {0, 1}, or None.
  """
  boxes = None
  if box is not None:
    boxes = processing.apply_boxes(np.asarray(box, np.float64)[None, None],
                                   info.original_size, info.resized_size)
  point_coords = point_labels = None
  if points:
    xy = np.asarray([point[:2] for point in points], np.float64)
    point_coords = processing.apply_coords(
        xy[None, None], info.original_size, info.resized_size)
    point_labels = np.asarray([point[2] for point in points],
                              np.int32)[None, None]
  return boxes, point_coords, point_labels


@dataclasses.dataclass(frozen=True)
class SimSamResult:
  """What one SimSAM prediction produced, from the engine's stages.

  Attributes:
    output: a `SimSamOutput` of host numpy arrays, field by field what the
      fused `SimSam.run` returns for the same inputs (H x W the input image,
      M x M the low-res grid, K the clicks, K' the candidates).
    info: the `processing.ImageInfo` of the image.
    model_box: (4,) float32 box in the model frame.
    timings_ms: wall milliseconds of preprocess, encode, first_decode,
      simulate_and_decode, aggregate (with the maps at the input size;
      compiled code only).
    compile_ms: wall milliseconds spent compiling encode, first_decode,
      simulate_and_decode, aggregate (ahead of time).
  """
  output: SimSamOutput
  info: processing.ImageInfo
  model_box: np.ndarray
  timings_ms: dict
  compile_ms: dict

  @property
  def mask(self) -> np.ndarray:
    """(H, W) bool, the written mask (`SimSamOutput.mask`)."""
    return self.output.mask

  @property
  def low_res_logits(self) -> np.ndarray:
    """(1, M, M) float32 final low-res logits (as `--save_logits` saves)."""
    return self.output.low_res_logits[None]


def _compiled(function: Callable, *args, **static) -> Tuple[Any, float]:
  """Compiles a jitted `function` ahead of time; returns (executable, ms).

  The executable takes the dynamic `args` only (not the `static` ones).
  """
  start = time.perf_counter()
  executable = function.lower(*args, **static).compile()
  return executable, (time.perf_counter() - start) * 1e3


# ----------------------------------------------------------------------------
# The front door.
# ----------------------------------------------------------------------------


class Prediction(NamedTuple):
  """`Predictor.predict`'s result (unpacks like SamPredictor's tuple).

  Attributes:
    masks: (C, H, W) bool at the image size, C = 1 or the multimask count.
    iou_predictions: (C,) float32 predicted IoUs.
    low_res_logits: (C, M, M) float32 decoder logits (M = 4 x the embedding
      grid); one of them, as (1, M, M), is a valid `mask_input`.
  """
  masks: np.ndarray
  iou_predictions: np.ndarray
  low_res_logits: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Image:
  """What `set_image` keeps: the (1, G, G, C) embedding and the geometry."""
  embedding: jax.Array
  info: processing.ImageInfo


class Predictor:
  """SAM / SimSAM on one image at a time (or batches), embedding cached.

  Args:
    sam: a loaded model (`load_sam`); `Predictor.load` builds one.
    profile: preprocessing profile name overriding the checkpoint's (None:
      the checkpoint's; logged as a warning when it differs).

  Raises:
    PredictorError: for an unknown profile.
  """

  def __init__(self, sam: LoadedSam, profile: Optional[str] = None):
    self.sam = with_profile(sam, profile)
    self.profile = sam_profile(self.sam)
    self._image: Optional[_Image] = None
    graphdef, profile_fns = sam.fns.graphdef, self.profile

    def one(state, embedding, points, labels, boxes, mask_input, info, multimask):
      """(1, G, G, C) embedding + (1, 1, ...) prompts -> masks, iou, logits."""
      low, iou = nnx.merge(graphdef, state).decode(
          embedding, points, labels, boxes, mask_input, multimask)
      return profile_fns.masks(low[0, 0], info), iou[0, 0], low[0, 0]

    def batch(state, pixels, points, labels, boxes, info, multimask):
      """(B, S, S, 3) pixels + (B, 1, ...) prompts, vmapped over images."""
      def image(p, pt, lb, bx):
        embedding = nnx.merge(graphdef, state).encode_image(p[None])
        add = lambda x: None if x is None else x[None]
        return one(state, embedding, add(pt), add(lb), add(bx), None, info, multimask)
      return jax.vmap(image)(pixels, points, labels, boxes)

    self._predict = jax.jit(one, static_argnames=("info", "multimask"))
    self._batch = jax.jit(batch, static_argnames=("info", "multimask"))
    self._replicas = StateReplicas()  # `predict_batch`'s replicated state

  @classmethod
  def load(cls, spec: str, *, precision: str = "float32",
           profile: Optional[str] = None,
           attention_impl: str = "xla") -> "Predictor":
    """A predictor over the checkpoint `spec` (`checkpoint.resolve`).

    Args:
      spec: a converted folder, `random:PRESET[:SEED]`, an official `.pth`,
        a `model.safetensors` or a Hugging Face folder.
      precision: "float32" or "bfloat16" (`modeling.policy`).
      profile: preprocessing profile overriding the checkpoint's, or None.
      attention_impl: "xla" or "cudnn" (CUDA GPU, bfloat16 only).

    Raises:
      PredictorError: naming --precision, --attention_impl, --checkpoint or
        --profile, before any weight is read for a bad spec.
    """
    policy = parse_policy(precision, attention_impl)
    if profile is not None and profile not in profiles.PROFILES:
      raise PredictorError(f"--profile={profile!r}: unknown preprocessing "
                           f"profile; known: {', '.join(profiles.names())}")
    return cls(load_sam(spec, policy), profile)

  @property
  def description(self) -> dict:
    """The checkpoint's provenance (`checkpoint.resolve`) and profile."""
    return self.sam.description

  @property
  def image_size(self) -> Tuple[int, int]:
    """(H, W) of the image set by `set_image`."""
    return self._require_image().info.original_size

  def _require_image(self) -> _Image:
    if self._image is None:
      raise PredictorError("no image set: call Predictor.set_image(image) "
                           "before predict / simsam")
    return self._image

  def _prepare(self, image) -> Tuple[np.ndarray, processing.ImageInfo]:
    """An image array or `--image` value -> (S, S, 3) pixels and geometry."""
    if isinstance(image, str):
      from simsam_jax import inputs  # pylint: disable=import-outside-toplevel
      image = inputs.load_input_image(image).pixels
    try:
      pixels, info = self.profile.preprocess(np.asarray(image),
                                             self.sam.config.image_size)
    except ValueError as error:
      raise PredictorError(f"--image: {error}") from None
    return pixels, info

  def set_image(self, image) -> None:
    """Encodes `image` once; `predict` and `simsam` then reuse the embedding.

    Args:
      image: (H, W, 3) uint8 RGB, values 0-255 ((H, W) or (H, W, 1)
        grayscale is replicated), or what `segment --image` accepts (a
        file path or `synthetic[:SEED[:HxW]]`).

    Raises:
      PredictorError: for an unreadable or unusable image.
    """
    pixels, info = self._prepare(image)
    embedding = self.sam.fns.encode(self.sam.state, jnp.asarray(pixels)[None])
    self._image = _Image(embedding=embedding, info=info)

  def reset_image(self) -> None:
    """Forgets the image (as `SamPredictor.reset_image`)."""
    self._image = None

  def predict(self, box=None, points=None, point_labels=None, mask_input=None,
              multimask: bool = False) -> Prediction:
    """SAM on the image set by `set_image`.

    Args:
      box: None or (4,) (x0, y0, x1, y1) input-image pixels in [0, W] x
        [0, H].
      points: None or (N, 2) (x, y) input-image pixels; point_labels: (N,)
        1 positive / 0 negative, given with `points`.
      mask_input: None or (1, M, M) / (M, M) float32 logits, typically a
        previous call's `low_res_logits[i]`.
      multimask: False returns SAM's single mask; True its ambiguity masks.

    Returns:
      A `Prediction` (masks, iou_predictions, low_res_logits).

    Raises:
      PredictorError: before `set_image`, without any prompt, or for a
        malformed or off-image prompt.
    """
    image = self._require_image()
    parsed_box = prompts.as_box(box)
    parsed_points = prompts.as_points(points, point_labels)
    if parsed_box is None and not parsed_points and mask_input is None:
      raise PredictorError("give a prompt: --box=x0,y0,x1,y1 and/or "
                           "--point=x,y,label")
    if parsed_box is not None or parsed_points:
      prompts.check_prompts(parsed_box, parsed_points, image.info.original_size)
    boxes, coords, labels = model_prompts(parsed_box, parsed_points, image.info)
    masks_in = None
    if mask_input is not None:
      m = self.sam.config.mask_input_size
      masks_in = np.asarray(mask_input, np.float32)
      if masks_in.shape not in ((m, m), (1, m, m)):
        raise PredictorError(f"mask_input must have shape (1, {m}, {m}), got "
                             f"{masks_in.shape}")
      masks_in = masks_in.reshape(1, 1, m, m)
    out = self._predict(self.sam.state, image.embedding, coords, labels, boxes,
                        masks_in, info=image.info, multimask=bool(multimask))
    masks, iou, low = jax.device_get(out)
    return Prediction(np.asarray(masks), np.asarray(iou, np.float32),
                      np.asarray(low, np.float32))

  def _simsam_config(self, k, clicks, aggregation, mask_prompt, seed
                     ) -> SimSamConfig:
    return prompts.parse_simsam_config(k, clicks, aggregation, mask_prompt, seed)

  def simsam(self, box, k: Optional[int] = None, clicks: Optional[str] = None,
             aggregation: Optional[str] = None, mask_prompt: Optional[str] = None,
             seed: Optional[int] = None, ground_truth=None) -> SimSamOutput:
    """SimSAM on the image set by `set_image` (`SimSam.run_from_embedding`).

    Args:
      box: (4,) (x0, y0, x1, y1) input-image pixels, with an area.
      k, clicks, aggregation, mask_prompt, seed: the `SimSamConfig` fields
        (None: the paper's defaults; K = 50).
      ground_truth: None or (H, W) bool, for strategies that read it
        (`oracle`).

    Returns:
      A `SimSamOutput` of host numpy arrays (mask (H, W) bool, agreement,
      clicks, candidate logits...).

    Raises:
      PredictorError: as `segment --method=simsam` for the same values.
    """
    image = self._require_image()
    config = self._simsam_config(k, clicks, aggregation, mask_prompt, seed)
    parsed_box = prompts.as_box(box)
    if parsed_box is None:
      raise PredictorError("--box=x0,y0,x1,y1 is required with --method=simsam")
    prompts.check_simsam_prompt(config, parsed_box, image.info.original_size)
    prompts.check_ground_truth_need(config, ground_truth)
    engine = simsam_engine(self.sam, config)
    try:
      output = engine.run_from_embedding(image.embedding[0],
                                         np.asarray(parsed_box, np.float32),
                                         image.info, ground_truth=ground_truth)
    except ValueError as error:
      raise PredictorError(f"--method=simsam: {error}") from None
    return jax.tree.map(np.asarray, jax.device_get(output))

  def predict_timed(self, image: np.ndarray, box: Optional[Box], points: Sequence[Point],
                    multimask: bool = False) -> SamResult:
    """`set_image` + `predict` stage by stage, each stage timed (`segment`).

    Compiles `encode`, `decode` (ahead of time, `.lower(...).compile()`) and
    the post-processing (a warm-up call) first, and times compilation apart
    from the runs. The image is not kept (`set_image` is not changed).

    Args:
      image: (H, W, 3) uint8 RGB, values 0-255.
      box: (x0, y0, x1, y1) input-image pixels in [0, W] x [0, H], or None.
      points: (x, y, label) input-image pixels, label 1 positive / 0
        negative; may be empty when `box` is given. Points without a box are
        padded with a not-a-point token by the prompt encoder, as in SAM.
      multimask: False returns SAM's single mask; True its K ambiguity
        masks, of which the one with the highest predicted IoU becomes
        `mask`.

    Returns:
      A `SamResult`.
    """
    if box is None and not points:
      raise PredictorError("give a prompt: --box=x0,y0,x1,y1 and/or "
                           "--point=x,y,label")
    fns, state = self.sam.fns, self.sam.state
    timings, compile_ms = {}, {}

    profile = self.profile
    (pixels, info), timings["preprocess"] = _timed(
        profile.preprocess, image, self.sam.config.image_size)
    pixels = pixels[None]
    boxes, point_coords, point_labels = model_prompts(box, points, info)

    encode, compile_ms["encode"] = _compiled(fns.encode, state, pixels)
    embedding_shape = jax.eval_shape(fns.encode, state, pixels)
    decode, compile_ms["decode"] = _compiled(
        fns.decode, state, embedding_shape, point_coords, point_labels, boxes, None,
        multimask_output=multimask)

    embedding, timings["encode"] = _timed(encode, state, pixels)
    (logits, iou), timings["decode"] = _timed(
        decode, state, embedding, point_coords, point_labels, boxes, None)
    low_res_logits = np.asarray(logits[0, 0], np.float32)
    iou_predictions = np.asarray(iou[0, 0], np.float32)
    chosen_index = int(np.argmax(iou_predictions)) if multimask else 0

    chosen = jnp.asarray(low_res_logits[chosen_index])
    # "sam": `processing.postprocess_logits(chosen, info) > 0`.
    _, compile_ms["postprocess"] = _timed(profile.masks, jnp.zeros_like(chosen), info)
    upscaled, timings["postprocess"] = _timed(profile.masks, chosen, info)
    mask = np.asarray(upscaled)

    return SamResult(
        mask=mask, low_res_logits=low_res_logits,
        iou_predictions=iou_predictions, chosen_index=chosen_index, info=info,
        model_box=None if boxes is None else boxes[0, 0],
        model_points=None if point_coords is None else point_coords[0, 0],
        timings_ms=timings, compile_ms=compile_ms)

  def simsam_timed(self, image: np.ndarray, box: Box, config: SimSamConfig,
                   ground_truth: Optional[np.ndarray] = None) -> SimSamResult:
    """`set_image` + `simsam` stage by stage, each stage timed (`segment`).

    Runs `SimSam.stages` (encode, first decode, click simulation + decode,
    aggregation with the maps at the input resolution), each compiled ahead
    of time and timed apart from its compilation. The result equals the
    fused `SimSam.run` for the same inputs (`tests/test_segment_simsam.py`
    checks it field by field). The image is not kept.

    Args:
      image: (H, W, 3) uint8 RGB, values 0-255.
      box: (x0, y0, x1, y1) input-image pixels in [0, W] x [0, H], with an
        area.
      config: a validated `SimSamConfig` (`prompts.parse_simsam_config`).
      ground_truth: (H, W) bool or None; given to the click strategy (the
        `oracle` strategy needs it).

    Returns:
      A `SimSamResult`.

    Raises:
      PredictorError: when the engine rejects the inputs (sizes, box, K).
    """
    engine = simsam_engine(self.sam, config)
    stages, state = engine.stages, engine.state
    timings, compile_ms = {}, {}

    (pixels, info), timings["preprocess"] = _timed(
        self.profile.preprocess, image, self.sam.config.image_size)
    box_array = np.asarray(box, np.float32)
    try:
      engine.check(info, box_array, ground_truth)
    except ValueError as error:
      raise PredictorError(f"--method=simsam: {error}") from None
    pixels = jnp.asarray(pixels, jnp.float32)
    box_device = jnp.asarray(box_array)
    truth = None if ground_truth is None else jnp.asarray(ground_truth, bool)
    key = engine.default_key()

    encode, compile_ms["encode"] = _compiled(stages.encode, state, pixels)
    embedding, timings["encode"] = _timed(encode, state, pixels)

    first, compile_ms["first_decode"] = _compiled(
        stages.first, state, embedding, box_device, info=info)
    (first_low, first_iou), timings["first_decode"] = _timed(
        first, state, embedding, box_device)

    simulate, compile_ms["simulate_and_decode"] = _compiled(
        stages.simulate_and_decode, state, embedding, box_device, first_low, key,
        truth, info=info)
    decoded, timings["simulate_and_decode"] = _timed(
        simulate, state, embedding, box_device, first_low, key, truth)
    clicks, labels, candidates, candidate_iou = decoded

    aggregate, compile_ms["aggregate"] = _compiled(
        stages.aggregate, candidates, candidate_iou, first_low, first_iou,
        clicks, labels, info=info, ground_truth=truth)
    output, timings["aggregate"] = _timed(
        functools.partial(aggregate, ground_truth=truth), candidates, candidate_iou,
        first_low, first_iou, clicks, labels)
    output = jax.tree.map(np.asarray, jax.device_get(output))
    model_box = processing.apply_boxes(box_array.astype(np.float64),
                                       info.original_size, info.resized_size)
    return SimSamResult(output=output, info=info, model_box=model_box,
                        timings_ms=timings, compile_ms=compile_ms)

  def _groups(self, images) -> list[Tuple[processing.ImageInfo, list[int], np.ndarray]]:
    """Images -> [(geometry, indices, (B, S, S, 3) pixels)], one per size."""
    groups: dict = {}
    for index, image in enumerate(images):
      pixels, info = self._prepare(image)
      group = groups.setdefault(info, ([], []))
      group[0].append(index)
      group[1].append(pixels)
    return [(info, indices, np.stack(pixels))
            for info, (indices, pixels) in groups.items()]

  def predict_batch(self, images: Sequence[Any], boxes=None, points=None,
                    point_labels=None, multimask: bool = False,
                    devices=None) -> list[Prediction]:
    """`set_image` + `predict` over many images, batched per image size.

    Images of one size run as one program, `jax.vmap`-ed and sharded over
    `devices` (default: the local devices) by `simsam.engine.data_parallel`.

    Args:
      images: B images as `set_image` takes them.
      boxes: None or B boxes (one per image).
      points: None or B (N, 2) arrays (N equal for all); point_labels: B
        (N,) arrays.
      multimask: as `predict`.

    Returns:
      B `Prediction`s, in order.
    """
    count = len(images)
    for name, value in (("boxes", boxes), ("points", points),
                        ("point_labels", point_labels)):
      if value is not None and len(value) != count:
        raise PredictorError(f"{name}: expected one per image ({count}), got "
                             f"{len(value)}")
    if boxes is None and points is None:
      raise PredictorError("give a prompt: --box=x0,y0,x1,y1 and/or "
                           "--point=x,y,label")
    groups = []  # Every prompt is checked before any image runs.
    for info, indices, pixels in self._groups(images):
      per_image = []
      for i in indices:
        box = prompts.as_box(None if boxes is None else boxes[i])
        pts = prompts.as_points(None if points is None else points[i],
                                None if point_labels is None else point_labels[i])
        prompts.check_prompts(box, pts, info.original_size)
        per_image.append(model_prompts(box, pts, info))
      if len({tuple(None if a is None else a.shape for a in p) for p in per_image}) > 1:
        raise PredictorError("predict_batch: every image needs the same prompt "
                             "kinds and number of points")
      groups.append((info, indices, pixels, per_image))
    results: list = [None] * count
    for info, indices, pixels, per_image in groups:
      stack = lambda j: (None if per_image[0][j] is None else
                         jnp.asarray(np.concatenate([p[j] for p in per_image])))
      boxes_m, coords, labels = stack(0), stack(1), stack(2)
      out = data_parallel(self._batch, self.sam.state,
                          (jnp.asarray(pixels), coords, labels, boxes_m),
                          jax.local_devices() if devices is None else devices,
                          replicas=self._replicas, info=info,
                          multimask=bool(multimask))
      masks, iou, low = jax.device_get(out)
      for row, i in enumerate(indices):
        results[i] = Prediction(np.asarray(masks[row]),
                                np.asarray(iou[row], np.float32),
                                np.asarray(low[row], np.float32))
    return results

  def simsam_batch(self, images: Sequence[Any], boxes, k: Optional[int] = None,
                   clicks: Optional[str] = None, aggregation: Optional[str] = None,
                   mask_prompt: Optional[str] = None, seed: Optional[int] = None,
                   ground_truths=None, devices=None) -> list[SimSamOutput]:
    """`simsam` over many images (`SimSam.run_batch` per image size).

    Args:
      images: B images as `set_image` takes them; boxes: B boxes.
      k, clicks, aggregation, mask_prompt, seed: as `simsam`.
      ground_truths: None or B (H, W) bool masks.
      devices: devices to shard over (default: the local devices).

    Returns:
      B `SimSamOutput`s of host numpy arrays, in order; each equals
      `simsam` on that image up to the batched-execution caveat of
      `evaluation.runner` (last-bit differences can flip near-ties when
      several images share a device).
    """
    config = self._simsam_config(k, clicks, aggregation, mask_prompt, seed)
    if len(boxes) != len(images):
      raise PredictorError(f"boxes: expected one per image ({len(images)}), "
                           f"got {len(boxes)}")
    engine = simsam_engine(self.sam, config)
    groups = []  # Every prompt is checked before any image runs.
    for info, indices, pixels in self._groups(images):
      parsed = []
      for i in indices:
        box = prompts.as_box(boxes[i])
        prompts.check_simsam_prompt(config, box, info.original_size)
        prompts.check_ground_truth_need(
            config, None if ground_truths is None else ground_truths[i])
        parsed.append(box)
      groups.append((info, indices, pixels, parsed))
    results: list = [None] * len(images)
    for info, indices, pixels, parsed in groups:
      truths = (None if ground_truths is None else
                np.stack([np.asarray(ground_truths[i], bool) for i in indices]))
      try:
        out = engine.run_batch(pixels, np.asarray(parsed, np.float32), info,
                               ground_truths=truths,
                               devices=jax.local_devices() if devices is None else devices)
      except ValueError as error:
        raise PredictorError(f"--method=simsam: {error}") from None
      out = jax.tree.map(np.asarray, jax.device_get(out))
      for row, i in enumerate(indices):
        results[i] = jax.tree.map(lambda x, r=row: x[r], out)
    return results
