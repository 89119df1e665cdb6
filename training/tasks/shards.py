"""Write and read labelled shards (format: ``schemas.labelled``), locally or on S3."""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from runtime import storage
from schemas import labelled as L
from schemas.layout import SHARDS_DIR, shard_file


@dataclass
class Sample:
    meta: L.SampleMeta
    image: np.ndarray  # uint8 [H, W, 3] RGB
    seg: np.ndarray | None = None  # uint8 [H, W]
    depth: np.ndarray | None = None  # float32 [H, W]
    normal: np.ndarray | None = None  # float32 [H, W, 3]
    mask: np.ndarray | None = None  # bool [H, W]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32), allow_pickle=False)
    return buf.getvalue()


def encode(sample: Sample) -> dict[str, bytes | str]:
    """The webdataset sample dict (``__key__`` plus one entry per member extension)."""
    meta = sample.meta
    h, w = sample.image.shape[:2]
    if (h, w) != (meta.height, meta.width):
        raise L.LabelError(
            f"{meta.key}: image is {w}x{h}, metadata says {meta.width}x{meta.height}"
        )
    out: dict[str, bytes | str] = {
        "__key__": meta.key,
        "png": _png(sample.image),
        L.META_EXT: meta.to_json(),
    }
    for task in meta.tasks:
        for ext in L.TASK_MEMBERS[task]:
            value = {L.SEG_EXT: sample.seg, L.DEPTH_EXT: sample.depth, L.NORMAL_EXT: sample.normal,
                     L.MASK_EXT: sample.mask}[ext]  # fmt: skip
            if value is None:
                raise L.LabelError(f"{meta.key}: task {task} needs member .{ext}")
            if value.shape[:2] != (h, w):
                raise L.LabelError(f"{meta.key}: .{ext} is {value.shape[:2]}, image is {(h, w)}")
            if ext == L.MASK_EXT:
                value = np.where(value > 0, 255, 0).astype(np.uint8)
            out[ext] = _png(value.astype(np.uint8)) if ext.endswith("png") else _npy(value)
    return out


def write_dataset(
    uri: str, samples: Iterator[Sample], tasks: list[str], per_shard: int = 64
) -> int:
    """Write samples as shards under ``uri`` with webdataset's ShardWriter; returns the count.

    Shards are written to a local temporary folder and published one by one (atomic rename
    locally, upload on S3); ``labelled.json`` is published last.
    """
    import webdataset as wds

    root = storage.locate(uri)
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        pattern = os.path.join(tmp, "%06d.tar")

        def publish(path: str) -> None:
            shard = int(os.path.basename(path).split(".")[0])
            storage.publish_file_atomic(path, root.join(shard_file(shard)))

        with wds.ShardWriter(pattern, maxcount=per_shard, post=publish, verbose=0) as sink:
            for sample in samples:
                unknown = set(sample.meta.tasks) - set(tasks)
                if unknown:
                    raise L.LabelError(f"{sample.meta.key}: tasks {unknown} not in {tasks}")
                sink.write(encode(sample))
                count += 1
    body = json.dumps(L.dataset_description(tasks), indent=1).encode()
    storage.write_bytes_atomic(root.join(L.DATASET_FILE), body)
    return count


def describe(uri: str) -> dict:
    root = storage.locate(uri)
    loc = root.join(L.DATASET_FILE)
    if not storage.exists(loc):
        raise L.LabelError(f"{uri} is not a labelled dataset (no {L.DATASET_FILE})")
    body = json.loads(storage.read_bytes(loc))
    L.check_description(body)
    return body


def shard_uris(uri: str) -> list[str]:
    return [loc.uri for loc in storage.list_files(storage.locate(uri).join(SHARDS_DIR), ".tar")]


def _decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)))


def decode(members: dict[str, bytes]) -> Sample:
    if L.META_EXT not in members:
        raise L.LabelError(f"sample without .{L.META_EXT} member: {sorted(members)}")
    meta = L.SampleMeta.from_json(members[L.META_EXT])
    image_ext = next((e for e in L.IMAGE_EXTS if e in members), None)
    if image_ext is None:
        raise L.LabelError(f"{meta.key}: no image member (.jpg or .png)")
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(members[image_ext])).convert("RGB"))
    npy = {e: np.load(io.BytesIO(members[e])) for e in (L.DEPTH_EXT, L.NORMAL_EXT) if e in members}
    return Sample(
        meta=meta, image=image,
        seg=_decode_png(members[L.SEG_EXT]) if L.SEG_EXT in members else None,
        depth=npy.get(L.DEPTH_EXT), normal=npy.get(L.NORMAL_EXT),
        mask=_decode_png(members[L.MASK_EXT]) > 0 if L.MASK_EXT in members else None,
    )  # fmt: skip


def read_shard(uri: str) -> Iterator[Sample]:
    """Samples of one tar (local or S3), streamed; members are grouped by key."""
    loc = storage.locate(uri)
    with (
        loc.fs.open_input_stream(loc.path) as stream,
        tarfile.open(fileobj=stream, mode="r|") as tar,
    ):
        key, members = None, {}
        for info in tar:
            if not info.isfile():
                continue
            base = os.path.basename(info.name)
            k, _, ext = base.partition(".")
            if key is not None and k != key:
                yield decode(members)
                members = {}
            key = k
            members[ext] = tar.extractfile(info).read()
        if members:
            yield decode(members)


def read_dataset(uri: str) -> Iterator[Sample]:
    describe(uri)
    for shard in shard_uris(uri):
        yield from read_shard(shard)
