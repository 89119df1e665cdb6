"""Wiring of the pre-filter classifiers and the person detector onto Ray Data actor pools.

Order: the user's classifiers first (in the order given; they run at a small input size),
the detector last, since it is the most expensive and it clears ``det_input`` behind it. On a
cluster with GPUs every stage asks for its configured GPU fraction; otherwise CPUs only. The
last stage reports each batch's outcomes to the job's progress counter (pipeline.progress).
"""

from __future__ import annotations

import ray

from curation.classify import ClassifierConfig, ImageClassifier, load_classifier
from curation.detect import DetectorConfig, PersonDetector, load_detector
from pipeline.progress import Reports


class ReportedImageClassifier(Reports, ImageClassifier):
    """The classifier stage, when it is the stream's last stage."""


class ReportedPersonDetector(Reports, PersonDetector):
    """The detector stage (always the last filter stage when there is one)."""


def active(detector: DetectorConfig | None) -> DetectorConfig | None:
    """The detector config, or None when there is none or its weights are 'none'."""
    return detector if detector is not None and detector.enabled else None


def has_filters(detector: DetectorConfig | None, classifiers: list[ClassifierConfig]) -> bool:
    return active(detector) is not None or bool(classifiers)


def filter_input_size(detector: DetectorConfig | None, classifiers: list[ClassifierConfig]) -> int:
    """Long side of ``det_input`` the validate stage must produce; 0: no stage reads it."""
    detector = active(detector)
    if detector is not None:
        return detector.image_size
    return max((c.image_size for c in classifiers), default=0)


def check_filters_ready(
    detector: DetectorConfig | None, classifiers: list[ClassifierConfig]
) -> None:
    """Resolve and load every filter model once on the driver, before any work starts.

    Raises ``curation.weights.WeightsError`` for weights that cannot be had, ``ValueError`` for
    weights that are the wrong kind of model (no person class, unknown drop labels, ...).
    """
    names = [c.name for c in classifiers]
    if len(set(names)) != len(names):
        raise ValueError(f"classifier names must be unique, got {names}")
    for config in classifiers:
        load_classifier(config, "cpu")
    if active(detector) is not None:
        load_detector(detector)


def _resources(gpu_fraction: float, cpus: float, has_gpu: bool) -> dict:
    return {"num_gpus": gpu_fraction, "num_cpus": cpus} if has_gpu else {"num_cpus": cpus}


def add_filter_stages(
    ds: ray.data.Dataset,
    detector: DetectorConfig | None,
    classifiers: list[ClassifierConfig],
    counter: object = None,
) -> ray.data.Dataset:
    """Append the classifier stages, then the detector stage, to ``ds``; the last of them
    reports to ``counter`` (a ``pipeline.progress.ProgressCounter``) when one is given."""
    detector = active(detector)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    for k, config in enumerate(classifiers):
        last_reader = detector is None and k == len(classifiers) - 1
        stage, kwargs = ImageClassifier, {"config": config, "clear_input": last_reader}
        if last_reader and counter is not None:
            stage, kwargs = ReportedImageClassifier, {**kwargs, "counter": counter}
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs=kwargs,
            concurrency=config.actors,
            batch_size=config.batch_size,
            batch_format="numpy",
            **_resources(config.gpu_fraction, config.cpus_per_actor, has_gpu),
        )
    if detector is not None:
        stage, kwargs = PersonDetector, {"config": detector}
        if counter is not None:
            stage, kwargs = ReportedPersonDetector, {**kwargs, "counter": counter}
        ds = ds.map_batches(
            stage,
            fn_constructor_kwargs=kwargs,
            concurrency=detector.actors,
            batch_size=detector.batch_size,
            batch_format="numpy",
            **_resources(detector.gpu_fraction, detector.cpus_per_actor, has_gpu),
        )
    return ds
