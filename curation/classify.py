"""Pre-filter classifiers: any image classifier the user supplies, dropping images by label.

Sapiens dropped watermarked, text-overlaid and artistic images with classifiers it did not
release; this stage runs yours. A classifier is an Ultralytics classification model, or a
TorchScript module taking a float [N, 3, S, S] RGB batch and returning [N, C] scores, with a
label file (one label per line, in output order). Each row records the top label and its
score in ``prefilter``; the row is rejected when that label is one of ``drop_labels`` with a
score >= ``min_score``. It reads ``det_input`` (the whole image, squashed to S x S: watermarks
and captions sit at the edges, which a centre crop would cut off).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from curation.detect import EMPTY_INPUT, pick_device, writable_objects
from curation.record import Batch, live, object_column, reject
from curation.weights import WeightsError, load_ultralytics, resolve_file
from schemas import Reason, Stage

FORMATS = ("ultralytics", "torchscript")
NORMALIZE = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "unit": ((0, 0, 0), (1, 1, 1)),
}


@dataclass(kw_only=True)
class ClassifierConfig:
    name: str = field(
        default="", metadata={"help": "name recorded in the manifest, e.g. watermark"}
    )
    weights: str = field(default="", metadata={"help": "local file, s3:// URI or Ultralytics name"})
    format: str = field(default="ultralytics", metadata={"help": "ultralytics or torchscript"})
    labels: str | None = field(
        default=None, metadata={"help": "TorchScript only: label file, one label per output"}
    )
    drop_labels: tuple[str, ...] = field(default=(), metadata={"help": "labels that drop an image"})
    min_score: float = field(default=0.5, metadata={"help": "drop when the top score is >= this"})
    image_size: int = field(
        default=224, metadata={"help": "classifier input size (square)", "aliases": ["imgsz"]}
    )
    normalize: str = field(
        default="imagenet", metadata={"help": "TorchScript input: imagenet or unit"}
    )
    softmax: bool = field(default=True, metadata={"help": "TorchScript outputs are logits"})
    batch_size: int = field(default=64, metadata={"help": "images per inference batch"})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda when present), 'cpu', ..."})
    half: bool = field(default=True, metadata={"help": "half precision on GPU (ignored on CPU)"})
    gpu_fraction: float = field(default=0.25, metadata={"help": "GPUs per actor on GPU clusters"})
    cpus_per_actor: float = field(default=1.0, metadata={"help": "CPUs per actor"})
    actors: int = field(default=1, metadata={"help": "actor pool size"})

    def __post_init__(self) -> None:
        if not self.name or not self.weights:
            raise ValueError("a classifier needs a name and weights")
        if self.format not in FORMATS:
            raise ValueError(f"classifier format must be one of {FORMATS}, got {self.format!r}")
        if (self.format == "torchscript") != (self.labels is not None):
            raise ValueError("a label file is required for torchscript classifiers, and only there")
        if self.normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {tuple(NORMALIZE)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError("min_score must be in [0, 1]")
        if min(self.image_size, self.batch_size, self.actors) < 1:
            raise ValueError("image_size, batch_size and actors must be >= 1")
        if not 0.0 < self.gpu_fraction <= 1.0 or self.cpus_per_actor <= 0:
            raise ValueError("gpu_fraction must be in (0, 1] and cpus_per_actor > 0")
        self.drop_labels = tuple(self.drop_labels)


def squash(image: np.ndarray, size: int) -> np.ndarray:
    """The whole image resized to size x size (aspect not kept)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


class _TorchScriptModel:
    def __init__(self, config: ClassifierConfig, device: str) -> None:
        import torch

        self.torch = torch
        self.config = config
        self.device = device
        path = resolve_file(config.weights)
        try:  # trusted input: a TorchScript module runs its own code (see curation.weights)
            self.module = torch.jit.load(path, map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            detail = str(exc).splitlines()[0]
            raise WeightsError(f"classifier {config.name}: {config.weights!r}: {detail}") from None
        self.half = config.half and device.startswith("cuda")
        if self.half:
            self.module = self.module.half()
        mean, std = NORMALIZE[config.normalize]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        try:
            with open(resolve_file(config.labels), encoding="utf-8") as handle:
                self.names = [line.strip() for line in handle if line.strip()]
        except UnicodeDecodeError:
            raise WeightsError(
                f"classifier {config.name}: labels {config.labels!r} are not text"
            ) from None

    def top1(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        array = np.stack([squash(im, self.config.image_size) for im in images])  # [N, S, S, 3]
        x = torch.from_numpy(array).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std  # [N, 3, S, S]
        with torch.inference_mode():
            out = self.module(x.half() if self.half else x).float()  # [N, C]
        if out.ndim != 2 or out.shape[1] != len(self.names):
            raise ValueError(
                f"{self.config.name}: output {tuple(out.shape)}, {len(self.names)} labels"
            )
        probs = out.softmax(dim=1) if self.config.softmax else out
        score, index = probs.max(dim=1)
        return index.cpu().numpy(), score.cpu().numpy()


class _UltralyticsModel:
    def __init__(self, config: ClassifierConfig, device: str) -> None:
        self.config = config
        self.device = device
        self.model, _ = load_ultralytics(config.weights, "classify", f"classifier {config.name}")
        if self.model.task != "classify":
            raise ValueError(f"{config.name}: {config.weights!r} is a {self.model.task!r} model")
        self.names = [self.model.names[i] for i in range(len(self.model.names))]

    def top1(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        bgr = [np.ascontiguousarray(squash(im, self.config.image_size)[..., ::-1]) for im in images]
        results = self.model.predict(
            bgr,
            imgsz=self.config.image_size,
            device=self.device,
            quantize=16 if self.config.half and self.device.startswith("cuda") else None,
            verbose=False,
        )
        index = np.array([r.probs.top1 for r in results])
        score = np.array([float(r.probs.top1conf) for r in results])
        return index, score


def load_classifier(config: ClassifierConfig, device: str = "cpu"):
    """Load the model and check that every drop label is one of its labels."""
    model = (_TorchScriptModel if config.format == "torchscript" else _UltralyticsModel)(
        config, device
    )
    unknown = set(config.drop_labels) - set(model.names)
    if unknown:
        raise ValueError(
            f"classifier {config.name}: drop labels {sorted(unknown)} not in its labels"
        )
    return model


class ImageClassifier:
    """Ray Data batch stage over ``det_input``; ``clear_input`` empties it (last reader only)."""

    def __init__(self, config: ClassifierConfig, clear_input: bool = False) -> None:
        self.config = config
        self.clear_input = clear_input
        self.model = load_classifier(config, pick_device(config.device))

    def __call__(self, batch: Batch) -> Batch:
        n = len(batch["status"])
        writable_objects(batch, ("stage", "reason", "detail", "prefilter"))
        rows = [i for i in np.flatnonzero(live(batch)) if batch["det_input"][i].size]
        for start in range(0, len(rows), self.config.batch_size):
            chunk = rows[start : start + self.config.batch_size]
            index, score = self.model.top1([batch["det_input"][i] for i in chunk])
            for i, k, s in zip(chunk, index, score, strict=True):
                self._record(batch, i, self.model.names[int(k)], float(s))
        if self.clear_input:
            batch["det_input"] = object_column([EMPTY_INPUT] * n)
        return batch

    def _record(self, batch: Batch, i: int, label: str, score: float) -> None:
        entry = {"classifier": self.config.name, "label": label, "score": score}
        earlier = batch["prefilter"][i]  # None, a list, or an array after a Ray round trip
        batch["prefilter"][i] = [*(earlier if earlier is not None else ()), entry]
        if label in self.config.drop_labels and score >= self.config.min_score:
            detail = f"{self.config.name}: {label} {score:.3f} >= {self.config.min_score}"
            reject(batch, i, Stage.PREFILTER, Reason.PREFILTER_LABEL, detail)
