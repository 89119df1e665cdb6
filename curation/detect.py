"""The person detect-filter: an Ultralytics YOLO detector and the Sapiens keep rule.

Sapiens kept an image when a person was detected with score > 0.9 and a box whose sides
exceed 300 pixels. Boxes are measured in original image pixels after EXIF orientation, so the
rule does not depend on the detector's input size. The detector reads ``det_input`` (filled by
the validate stage with ``detector_input``) and clears it, so pixels never reach the writer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from curation.record import Batch, live, object_column, reject
from curation.weights import file_sha256, load_ultralytics
from schemas import Reason, Stage
from schemas.record import record_dtype
from schemas.summary import KeepRule

EMPTY_INPUT = np.zeros((0, 0, 3), dtype=np.uint8)
CROP_ASPECT = 4 / 3  # height / width of the Sapiens fine-tuning input (1024 x 768)


def writable_objects(batch: Batch, names: tuple[str, ...]) -> None:
    """Make ``names`` object columns of values or None, whatever form they arrived in.

    Ray Data hands an all-null column over as a float array of NaN, into which neither a
    reason string nor a list of boxes can be written; a missing column becomes all None.
    """
    n = len(batch["status"])
    for name in names:
        column = batch.get(name)
        if column is None:
            batch[name] = object_column([None] * n)
        elif column.dtype != object:
            nan = column.dtype.kind == "f"
            values = [None if nan and np.isnan(v) else v for v in column.tolist()]
            batch[name] = object_column(values)


def detector_input(image: Image.Image, image_size: int) -> np.ndarray:
    """HxWx3 uint8 RGB array of an oriented image, its long side scaled down to ``image_size``.

    Smaller images are not upscaled: the detector letterboxes them itself. ``reducing_gap``
    lets Pillow shrink by an integer factor first (``Image.reduce``), which is most of the cost.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = image_size / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image)


@dataclass(frozen=True)
class RuleResult:
    passes: np.ndarray  # [N] bool, per person
    num_passing: int
    reason: Reason | None  # None: keep the image
    detail: str


def large_enough(boxes_xyxy: np.ndarray, rule: KeepRule) -> np.ndarray:
    widths = boxes_xyxy[:, 2] - boxes_xyxy[:, 0]
    heights = boxes_xyxy[:, 3] - boxes_xyxy[:, 1]
    if rule.box_rule == "area":
        return widths * heights > rule.min_area
    if rule.box_rule == "long_side":
        return np.maximum(widths, heights) > rule.min_side
    # both_sides and short_side are the same test: min(w, h) > s  <=>  w > s and h > s
    return np.minimum(widths, heights) > rule.min_side


def apply_rule(boxes_xyxy: np.ndarray, scores: np.ndarray, rule: KeepRule) -> RuleResult:
    """Judge one image from its person boxes ([N, 4] xyxy, original pixels) and scores ([N])."""
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    confident = scores > rule.min_score
    passes = confident & large_enough(boxes_xyxy, rule)
    count = int(passes.sum())
    reason, detail = None, ""
    if len(scores) == 0:
        reason, detail = Reason.NO_PERSON, "no person detected"
    elif count == 0 and not confident.any():
        reason = Reason.PERSON_LOW_SCORE
        detail = f"{len(scores)} person(s), best score {scores.max():.3f} <= {rule.min_score}"
    elif count == 0:
        reason = Reason.PERSON_TOO_SMALL
        detail = f"{int(confident.sum())} confident person(s), none with {_size_text(rule)}"
    elif count < rule.min_persons:
        reason, detail = Reason.TOO_FEW_PERSONS, f"{count} passing < min_persons {rule.min_persons}"
    elif rule.max_persons is not None and count > rule.max_persons:
        reason, detail = (
            Reason.TOO_MANY_PERSONS,
            f"{count} passing > max_persons {rule.max_persons}",
        )
    return RuleResult(passes=passes, num_passing=count, reason=reason, detail=detail)


def _size_text(rule: KeepRule) -> str:
    if rule.box_rule == "area":
        return f"area > {rule.min_area:g}"
    return f"{rule.box_rule.replace('_', ' ')} > {rule.min_side:g}"


def crop_box(box_xyxy: np.ndarray, padding: float) -> tuple[float, float, float, float]:
    """The 4:3 (height:width) crop around a box, padded, as top-down pose uses it.

    Not clipped to the image: clipping would change the aspect; the pose loader pads instead.
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    if h < w * CROP_ASPECT:
        h = w * CROP_ASPECT
    else:
        w = h / CROP_ASPECT
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


@dataclass(kw_only=True)
class DetectorConfig:
    weights: str = field(
        # The largest YOLO11: the keep rule wants a score above 0.9, which the nano model's
        # IoU-aware scores often miss on clearly visible people (README, "The person detector").
        default="yolo11x.pt",
        metadata={
            "help": "detector weights: local file, s3:// URI or Ultralytics name "
            "(yolo11n.pt for CPU smoke tests); 'none' disables"
        },
    )
    image_size: int = field(
        default=640,
        metadata={"help": "detector input size (long side, pixels)", "aliases": ["imgsz"]},
    )
    batch_size: int = field(default=32, metadata={"help": "images per inference batch"})
    device: str = field(
        default="auto", metadata={"help": "'auto' (cuda when present), 'cpu', 'cuda:0'"}
    )
    half: bool = field(default=True, metadata={"help": "half precision on GPU (ignored on CPU)"})
    conf: float = field(
        default=0.25,
        metadata={"help": "detector confidence floor; persons below it are not recorded"},
    )
    iou: float = field(default=0.7, metadata={"help": "NMS IoU threshold"})
    max_det: int = field(default=300, metadata={"help": "most persons recorded per image"})
    person_class: str = field(
        default="person", metadata={"help": "class name of persons in the model"}
    )
    # the keep rule: its defaults are KeepRule's, the summary records it as a KeepRule
    min_score: float = field(
        default=KeepRule.min_score, metadata={"help": "keep rule: person score must be > this"}
    )
    min_side: float = field(
        default=KeepRule.min_side, metadata={"help": "keep rule: box side(s) must be > this (px)"}
    )
    box_rule: str = field(
        default=KeepRule.box_rule,
        metadata={"help": "both_sides (= short_side), long_side, or area (> min_area)"},
    )
    min_area: float = field(
        default=KeepRule.min_area, metadata={"help": "keep rule for box_rule=area (px^2)"}
    )
    min_persons: int = field(
        default=KeepRule.min_persons, metadata={"help": "persons passing the rule needed to keep"}
    )
    max_persons: int | None = field(
        default=KeepRule.max_persons, metadata={"help": "most passing persons to keep"}
    )
    crops: bool = field(
        default=False, metadata={"help": "record a 4:3 crop box per passing person"}
    )
    crop_padding: float = field(
        default=1.25, metadata={"help": "crop = box scaled by this, then 4:3"}
    )
    gpu_fraction: float = field(
        default=1.0, metadata={"help": "GPUs per detector actor on GPU clusters"}
    )
    cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs per detector actor"})
    actors: int = field(default=1, metadata={"help": "detector actor pool size"})

    def __post_init__(self) -> None:
        for name in ("image_size", "batch_size", "max_det", "actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"detector {name} must be >= 1")
        if self.image_size % 32:
            raise ValueError(f"detector image_size must be a multiple of 32, got {self.image_size}")
        if not 0.0 < self.conf < 1.0 or not 0.0 < self.iou <= 1.0:
            raise ValueError("detector conf must be in (0, 1) and iou in (0, 1]")
        if not 0.0 < self.gpu_fraction <= 1.0 or self.cpus_per_actor <= 0:
            raise ValueError("gpu_fraction must be in (0, 1] and cpus_per_actor > 0")
        if self.crop_padding < 1.0:
            raise ValueError("crop_padding must be >= 1")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            raise ValueError(f"unknown device {self.device!r}")
        self.rule()  # validates the rule fields

    @property
    def enabled(self) -> bool:
        return self.weights.strip().lower() != "none"

    def rule(self) -> KeepRule:
        return KeepRule(
            min_score=self.min_score,
            min_side=self.min_side,
            box_rule=self.box_rule,
            min_area=self.min_area,
            min_persons=self.min_persons,
            max_persons=self.max_persons,
        )


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def load_detector(config: DetectorConfig):
    """Resolve and load the weights; returns (model, person class id, local weights path)."""
    model, path = load_ultralytics(config.weights, "detect", "detector weights")
    if model.task != "detect":
        raise ValueError(f"detector weights {config.weights!r} are a {model.task!r} model")
    ids = [i for i, name in model.names.items() if name == config.person_class]
    if not ids:
        shown = list(model.names.values())[:8]
        raise ValueError(
            f"detector weights {config.weights!r} have no class {config.person_class!r} "
            f"(classes: {shown}...)"
        )
    return model, ids[0], path


class PersonDetector:
    """Ray Data batch stage: detect persons on live rows, record them, apply the keep rule."""

    def __init__(self, config: DetectorConfig) -> None:
        import ultralytics

        self.config = config
        self.rule = config.rule()
        self.model, self.person_id, path = load_detector(config)
        self.device = pick_device(config.device)
        self.half = config.half and self.device.startswith("cuda")
        if self.device == "cpu":
            import torch

            # Importing Ultralytics pins OMP_NUM_THREADS=1 when unset: use the CPUs we were given.
            torch.set_num_threads(max(1, round(config.cpus_per_actor)))
        identity = {
            "model": config.weights,
            "weights_sha256": file_sha256(path),
            "ultralytics": ultralytics.__version__,
            "imgsz": config.image_size,  # under Ultralytics' name, as manifests record it
            "conf": config.conf,
            "iou": config.iou,
            "half": self.half,
            "rule": asdict(self.rule),
        }
        self.identity = json.dumps(identity, sort_keys=True)

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        writable_objects(batch, ("stage", "reason", "detail", "persons", "detector"))
        num_persons = np.zeros(n, dtype=record_dtype("num_persons"))  # 0: rows not judged
        rows = [i for i in np.flatnonzero(live(batch)) if batch["det_input"][i].size]
        for i in np.flatnonzero(live(batch)):
            if not batch["det_input"][i].size:
                reject(
                    batch, i, Stage.DETECT, Reason.DETECT_ERROR, "no detector input for this row"
                )
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start : start + self.config.batch_size]
            for i, found in zip(chunk, self._detect(batch, chunk), strict=True):
                self._record(batch, i, found, num_persons)
        batch["num_persons"] = num_persons
        batch["det_input"] = object_column([EMPTY_INPUT] * n)
        return batch

    def _detect(self, batch: Batch, rows: list[int]) -> list:
        """Per row: (boxes [N, 4] in original pixels, scores [N]) or the exception it raised."""
        images = [np.ascontiguousarray(batch["det_input"][i][..., ::-1]) for i in rows]  # BGR
        try:
            results = self._predict(images)
        except Exception:  # one bad image must not fail its batch: retry one by one
            if len(images) == 1:
                raise
            return [self._detect_one(batch, i) for i in rows]
        return [self._to_original(batch, i, r) for i, r in zip(rows, results, strict=True)]

    def _detect_one(self, batch: Batch, i: int):
        try:
            return self._detect(batch, [i])[0]
        except Exception as exc:  # recorded as detect_error with the message
            return exc

    def _predict(self, images: list[np.ndarray]) -> list:
        return self.model.predict(
            images,
            imgsz=self.config.image_size,
            conf=self.config.conf,
            iou=self.config.iou,
            max_det=self.config.max_det,
            classes=[self.person_id],
            device=self.device,
            quantize=16 if self.half else None,  # Ultralytics' name for fp16 now
            verbose=False,
        )

    def _to_original(self, batch: Batch, i: int, result) -> tuple[np.ndarray, np.ndarray]:
        in_h, in_w = batch["det_input"][i].shape[:2]
        width, height = int(batch["width"][i]), int(batch["height"][i])
        boxes = result.boxes.xyxy.float().cpu().numpy().astype(np.float64)
        boxes *= np.array([width / in_w, height / in_h] * 2)
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        return boxes, result.boxes.conf.float().cpu().numpy()

    def _record(self, batch: Batch, i: int, found, num_persons: np.ndarray) -> None:
        batch["detector"][i] = self.identity
        if isinstance(found, Exception):
            reject(batch, i, Stage.DETECT, Reason.DETECT_ERROR, f"{type(found).__name__}: {found}")
            return
        boxes, scores = found
        result = apply_rule(boxes, scores, self.rule)
        batch["persons"][i] = [
            self._person(box, score, passed)
            for box, score, passed in zip(boxes, scores, result.passes, strict=True)
        ]
        num_persons[i] = result.num_passing
        if result.reason is not None:
            reject(batch, i, Stage.DETECT, result.reason, result.detail)

    def _person(self, box: np.ndarray, score: float, passed: bool) -> dict:
        crop = crop_box(box, self.config.crop_padding) if self.config.crops and passed else None
        person = dict(zip(("x0", "y0", "x1", "y1"), (float(v) for v in box), strict=True))
        person.update(score=float(score), passes=bool(passed))
        for k, name in enumerate(("crop_x0", "crop_y0", "crop_x1", "crop_y1")):
            person[name] = None if crop is None else crop[k]
        return person
