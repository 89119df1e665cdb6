"""Embedding images for the semantic dedup, and the dataset's cache of embeddings.

``ShardEmbedder`` is a callable class over one shard at a time (the shape of a Ray Data
actor-pool stage). Determinism: a shard's images are embedded in fixed chunks in key order,
with a fixed number of torch threads, so an embedding never depends on which worker or batch
it landed in.

Cache: each shard's embeddings are published under ``<dataset>/_work/embeddings/<fp>/``
(``schemas.layout.embedding_file``) as soon as the shard is done, keyed by sample key and the
manifest's sha256 (dedup rewrites shards, so row positions move), where ``fp`` is a
fingerprint of the model file's bytes and of the preprocessing (``EncoderInfo.fingerprint``).
A rerun, or a resumed run after a crash, embeds only the samples that have no cached row.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.dedup.encoder import EncoderInfo, load_encoder
from curation.writer import iter_shard, sample_image, table_to_parquet_bytes
from runtime.storage import Location, exists, list_files, locate, write_bytes_atomic
from schemas.layout import embedding_card, embedding_dir, embedding_file, shard_file, shard_of

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# an empty cache; the files hold a fixed-size list of the model's width
CACHE_SCHEMA = pa.schema(
    [("key", pa.string()), ("sha256", pa.string()), ("embedding", pa.list_(pa.float32()))]
)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Image bytes -> [3, size, size] float32, whole image resized (no crop), ImageNet-normalised."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is large
    image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # [H, W, 3]
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def embedding_table(keys: list[str], sha256: list[str], vectors: np.ndarray) -> pa.Table:
    """Cached rows: key, the manifest's sha256 (a re-fetched key misses), embedding [D]."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "sha256": pa.array(sha256, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        }
    )


def embedding_matrix(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """[N, D] float32 of a fixed-size-list embedding column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), -1)


class ShardEmbedder:
    """Ray Data stage: batch {"shard": [s], "keys": [[k, ...]], "sha256": [[h, ...]]} ->
    {"key": [N], "embedding": [N, D]}.

    Reads the listed samples of shard ``s`` of ``dataset_uri``; embeddings are L2-normalised.
    With ``cache`` (a fingerprint, ``EncoderInfo.fingerprint``) each shard's embeddings are
    merged into its cache file, published atomically before the batch is returned.
    """

    def __init__(
        self,
        *,
        dataset_uri: str,
        model: str,
        image_size: int,
        chunk: int,
        threads: int,
        device: str,
        cache: str | None = None,
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        self.model = load_encoder(model, image_size, device)
        self.dataset = locate(dataset_uri)
        self.image_size, self.chunk, self.cache = image_size, chunk, cache

    def __call__(self, batch: dict) -> dict:
        keys, vectors = [], []
        hashes = batch.get("sha256", [None] * len(batch["shard"]))
        for shard, wanted, sha256 in zip(batch["shard"], batch["keys"], hashes, strict=True):
            images = self._images(int(shard), set(wanted))
            found = [k for k, _ in images]
            x = np.concatenate(
                [
                    self.embed([data for _, data in images[start : start + self.chunk]])
                    for start in range(0, len(images), self.chunk)
                ]
            )
            if self.cache is not None:
                sha_of = dict(zip(wanted, sha256, strict=True))
                self._store(int(shard), embedding_table(found, [sha_of[k] for k in found], x))
            keys.extend(found)
            vectors.append(x)
        return {"key": np.array(keys, dtype=object), "embedding": np.concatenate(vectors)}

    def embed(self, images: list[bytes]) -> np.ndarray:
        """[N, D] float32, L2-normalised embeddings of encoded images."""
        x = np.stack([preprocess(data, self.image_size) for data in images])  # [N, 3, S, S]
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(x).to(self.device))  # [N, D]
        out = out.float().cpu().numpy().reshape(len(images), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _store(self, shard: int, table: pa.Table) -> None:
        """Merge into the shard's cache file (rows of keys embedded before are kept)."""
        import pyarrow.parquet as pq

        loc = self.dataset.join(embedding_file(self.cache, shard))
        if exists(loc):
            old = pq.read_table(loc.path, filesystem=loc.fs)
            table = pa.concat_tables([old.filter(~pc.is_in(old["key"], table["key"])), table])
        write_bytes_atomic(loc, table_to_parquet_bytes(table.sort_by("key")))

    def _images(self, shard: int, wanted: set[str]) -> list[tuple[str, bytes]]:
        """(key, image bytes) of the wanted samples of the shard, in key order."""
        found = []
        for sample in iter_shard(self.dataset.join(shard_file(shard))):
            if sample["__key__"] in wanted:
                found.append((sample["__key__"], sample_image(sample)))
        if len(found) != len(wanted):  # the manifest names samples the tar lacks
            missing = sorted(wanted - {key for key, _ in found})
            raise ValueError(f"shard {shard} lacks {len(missing)} samples, e.g. {missing[:3]}")
        return sorted(found)


def cache_folder(dataset: Location, encoder: EncoderInfo, image_size: int) -> tuple[str, Location]:
    """(fingerprint, folder) of the model's embedding cache, with its model.json written."""
    fingerprint = encoder.fingerprint(image_size)
    card = dataset.join(embedding_card(fingerprint))
    if not exists(card):
        write_bytes_atomic(card, encoder.card(image_size))
    return fingerprint, dataset.join(embedding_dir(fingerprint))


def match_cache(cached: pa.Table, wanted: pa.Table) -> pa.Table:
    """``wanted`` with ``row``: the cached row of the same (key[, sha256]), null if none."""
    # Acero joins no list columns: join on (key[, sha256]) to a row number of the cache
    match = [name for name in ("key", "sha256") if name in wanted.column_names]
    rows = cached.select(match).append_column(
        "row", pa.array(np.arange(cached.num_rows, dtype=np.int64))
    )
    return wanted.join(rows, keys=match, join_type="left outer")


def read_cache(dataset: Location, fingerprint: str, shards: set[int]) -> pa.Table:
    """Cached (key, sha256, embedding) rows of the given shards (empty if none)."""
    import pyarrow.dataset as pads

    files = [
        f
        for f in list_files(dataset.join(embedding_dir(fingerprint)), ".parquet")
        if shard_of(f.uri.rsplit("/", 1)[1]) in shards
    ]
    if not files:
        return CACHE_SCHEMA.empty_table()
    return pads.dataset(
        [f.path for f in files], filesystem=files[0].fs, format="parquet"
    ).to_table()


def read_shard_cache(dataset: Location, fingerprint: str, shard: int) -> pa.Table:
    """Cached (key, sha256, embedding) rows of one shard (without rows if none)."""
    file = dataset.join(embedding_file(fingerprint, shard))
    if not exists(file):
        return pa.table({"key": pa.array([], pa.string()), "sha256": pa.array([], pa.string())})
    return pq.read_table(file.path, filesystem=file.fs)
