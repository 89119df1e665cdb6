"""Loading a dataset into Ray Data: each manifest row joined with its decoded image.

    from pipeline.readers import read_samples
    ds = read_samples("s3://bucket/humans/v1")       # manifest columns + image [H, W, 3] uint8
    ds = read_samples("./out", decode=False)         # manifest columns + image_bytes (original)
    ds.filter(lambda row: row["num_persons"] >= 2).take(4)

The manifests are read as typed Parquet (persons as a list of structs, fetched_at as a
timestamp), and each block fetches its images by streaming the one tar its rows come from, so
the join needs no shuffle. For reading the shards alone with Ray's own reader, see the README
(``ray.data.read_webdataset(..., decoder=None)``: shards mix jpg, png and webp members, which
its default decoder cannot put in one column).
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np
import pyarrow as pa

from curation.manifest import check_dataset, manifest_files
from curation.writer import iter_shard, sample_image
from runtime.storage import locate
from schemas.layout import shard_file


def read_samples(dataset_uri: str, *, decode: bool = True, **read_args: object):
    """A ``ray.data.Dataset`` of the dataset's samples: every manifest column plus ``image``
    (RGB, EXIF orientation applied, as the detector saw it) or, with ``decode=False``,
    ``image_bytes`` (the original file bytes). ``read_args`` go to ``ray.data.read_parquet``.
    """
    import ray

    dataset = check_dataset(dataset_uri)
    files = [f.path for f in manifest_files(dataset.uri)]
    if not files:
        raise ValueError(f"{dataset.uri}: the dataset holds no samples")
    ds = ray.data.read_parquet(files, filesystem=dataset.fs, **read_args)
    return ds.map_batches(
        _attach_images,
        fn_kwargs={"dataset_uri": dataset.uri, "decode": decode},
        batch_format="pyarrow",
        batch_size=None,  # a whole block: most of them hold the rows of one shard
    )


def _attach_images(batch: pa.Table, dataset_uri: str, decode: bool) -> pa.Table:
    wanted: dict[int, set[str]] = defaultdict(set)
    for key, shard in zip(batch["key"].to_pylist(), batch["shard"].to_pylist(), strict=True):
        wanted[shard].add(key)
    dataset = locate(dataset_uri)
    found: dict[str, bytes] = {}
    for shard, keys in wanted.items():
        for sample in iter_shard(dataset.join(shard_file(shard))):
            if sample["__key__"] in keys:
                found[sample["__key__"]] = sample_image(sample)
                keys.discard(sample["__key__"])
                if not keys:
                    break  # the rest of the tar belongs to other blocks
    missing = [k for k in batch["key"].to_pylist() if k not in found]
    if missing:
        raise ValueError(f"{dataset_uri}: {len(missing)} samples missing from their shards")
    images = [found[key] for key in batch["key"].to_pylist()]
    if not decode:
        return batch.append_column("image_bytes", pa.array(images, pa.binary()))
    from ray.data.extensions import ArrowVariableShapedTensorArray

    pixels = [_decode(image) for image in images]
    return batch.append_column("image", ArrowVariableShapedTensorArray.from_numpy(pixels))


def _decode(image: bytes) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(image)) as opened:
        return np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))  # [H, W, 3] uint8
