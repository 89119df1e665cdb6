"""Semantic (embedding) dedup, SemDeDup style: embed, k-means partitions, cosine search inside.

Engine-free: ``ShardEmbedder`` is a callable class over one shard at a time (the shape of a
Ray Data actor-pool stage), ``semantic_pairs`` is plain FAISS (on a GPU when FAISS sees one).

The model is either a TorchScript module ([N, 3, H, W] float images normalised with ImageNet
mean/std -> [N, D]) or an encoder file (``models.encoder_file``) as
``python -m training.checkpoint`` or ``python -m training.import_sapiens`` writes it: the
tensors of a ``models.vit.VisionTransformer`` with its config (preset, image size,
patch) and lineage. The format is read from the file, never from its name, and the preset
from its config, never from tensor shapes; ``describe_encoder`` checks it on the driver
before any work.

Determinism: a shard's images are embedded in fixed chunks in key order, with a fixed number
of torch threads, so an embedding never depends on which worker or batch it landed in; the
k-means input is in priority order with a fixed seed. FAISS on a GPU computes k-means with
other kernels than on a CPU, so a GPU and a CPU run may partition differently.

Cache: each shard's embeddings are published under ``<dataset>/_work/embeddings/<fp>/``
(``schemas.layout.embedding_file``) as soon as the shard is done, keyed by sample key and the
manifest's sha256 (dedup rewrites shards, so row positions move), where ``fp`` is a
fingerprint of the model file's bytes and of the preprocessing. A rerun, or a resumed run after
a crash, embeds only the samples that have no cached row.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import zipfile
from dataclasses import asdict, dataclass, replace

import numpy as np
import pyarrow as pa

from curation.dedup.cluster import greedy_canonical, priority_order
from curation.writer import iter_shard, sample_image, table_to_parquet_bytes
from runtime.storage import exists, locate, write_bytes_atomic
from schemas.layout import embedding_file, shard_file

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_IMAGE_SIZE = 224  # a TorchScript module carries no input size
# Part of the cache fingerprint: bump it whenever preprocess() or the MAE pooling changes, so
# that embeddings made the old way are never mixed with new ones.
PREPROCESS = "resize-bilinear-imagenet-v1"
# The MAE encoder's embedding: the mean of its patch tokens after the final norm, not the class
# token. MAE's loss scores reconstructed patches only, so the class token gets no direct
# training signal (it stays near its initialisation in short runs), while every patch token
# carries its patch's content; MAE's own fine-tuning pools the same way (global_pool).
MAE_POOLING = "mean-patch-tokens-after-norm"
# faiss GPU k-NN selects at most 2048 neighbours; a partition row with more above the threshold
# than this is searched again exactly on the CPU (semantic_pairs).
GPU_MAX_K = 1024


class EncoderError(ValueError):
    """The semantic model is missing, unreadable, or not an encoder this stage can run."""


@dataclass(frozen=True, kw_only=True)
class EncoderInfo:
    """What the driver reads from the model file before any work starts."""

    uri: str  # as given: local path or s3://
    kind: str  # "torchscript" or "mae"
    sha256: str  # of the file's bytes
    preset: str | None = None  # MAE: the models.vit preset in the file's config
    image_size: int | None = None  # MAE: the side it was trained at (None: not square)
    patch_size: int | None = None  # MAE

    def input_size(self, configured: int | None) -> int:
        """The side images are resized to: the configured one, else the checkpoint's own."""
        size = configured or self.image_size or DEFAULT_IMAGE_SIZE
        if self.patch_size and size % self.patch_size:
            raise EncoderError(
                f"semantic image size {size} is not a multiple of the encoder's patch size "
                f"{self.patch_size} ({self.uri})"
            )
        return size

    def fingerprint(self, image_size: int) -> str:
        """Cache folder name: the model's bytes plus every setting that changes an embedding.
        Not the device or the chunk size: those change the last float bits only."""
        settings = dict(
            sha256=self.sha256, kind=self.kind, preset=self.preset, image_size=image_size,
            preprocess=PREPROCESS, pooling=MAE_POOLING if self.kind == "mae" else None,
        )  # fmt: skip
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def card(self, image_size: int) -> bytes:
        """model.json beside the cached embeddings: which model and settings made them."""
        fields = asdict(self) | dict(input_size=image_size, preprocess=PREPROCESS)
        if self.kind == "mae":
            fields["pooling"] = MAE_POOLING
        return json.dumps(fields, indent=2).encode()


def describe_encoder(uri: str) -> EncoderInfo:
    """Check the model file (local or s3://) and read what the driver needs; EncoderError if
    it is missing, corrupt, or neither TorchScript nor an exported MAE encoder."""
    from curation.weights import WeightsError, file_sha256, resolve_file

    try:
        path = resolve_file(uri)
    except WeightsError as exc:
        raise EncoderError(f"semantic model: {exc}") from exc
    kind = _format_of(path, uri, verify=True)
    sha256 = file_sha256(path)
    if kind == "torchscript":
        return EncoderInfo(uri=uri, kind=kind, sha256=sha256)
    stored = _encoder_file(path, uri)
    h, w = stored.config.img_size
    return EncoderInfo(uri=uri, kind="mae", sha256=sha256, preset=stored.preset,
                       image_size=h if h == w else None, patch_size=stored.config.patch_size)  # fmt: skip


def load_encoder(uri: str, image_size: int, device: str):
    """The model as a torch module [N, 3, S, S] -> [N, D], in eval mode on ``device``."""
    import torch

    from curation.weights import resolve_file

    path = resolve_file(uri)  # per node: s3:// objects are fetched into the local cache
    if _format_of(path, uri, verify=False) == "torchscript":
        return torch.jit.load(path, map_location=device).eval()
    from models.vit import VisionTransformer, load_encoder_state

    class MeanPatchTokens(torch.nn.Module):  # see MAE_POOLING for why the mean of patches
        def __init__(self, vit: VisionTransformer) -> None:
            super().__init__()
            self.vit = vit

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.vit.forward_features(x).mean(dim=1)  # [N, L, D] -> [N, D]

    stored = _encoder_file(path, uri)
    encoder = VisionTransformer(replace(stored.config, img_size=(image_size, image_size)))
    # interpolates the position table from the file's grid to image_size
    load_encoder_state(encoder, stored.state, grid=stored.config.grid)
    return MeanPatchTokens(encoder).to(device).eval()


def _format_of(path: str, uri: str, *, verify: bool) -> str:
    """ "torchscript" or "checkpoint", from the archive's members (both are zip archives)."""
    not_model = (
        f"semantic model {uri!r} is neither a TorchScript module nor an encoder exported by "
        "'python -m training.checkpoint RUN encoder.pt'"
    )
    if not zipfile.is_zipfile(path):
        raise EncoderError(f"{not_model}: not a zip archive (corrupt or truncated?)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            # CRC of every member, on the driver only: a damaged file fails here, not in actors
            bad = archive.testzip() if verify else None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise EncoderError(f"{not_model}: unreadable archive ({exc})") from exc
    if bad is not None:
        raise EncoderError(f"{not_model}: member {bad!r} is corrupt")
    if any(name.endswith("/constants.pkl") for name in names):  # torch.jit.save's layout
        return "torchscript"
    if any(name.endswith("/data.pkl") for name in names):  # torch.save's layout
        return "checkpoint"
    raise EncoderError(f"{not_model}: a zip archive of something else")


def _encoder_file(path: str, uri: str):
    """The encoder file at ``path`` (``models.encoder_file.EncoderFile``)."""
    from models.encoder_file import EncoderFileError, load

    try:  # mmap: the driver reads the config without copying a multi-GB file into memory
        return load(path, uri, mmap=True)
    except EncoderFileError as exc:
        raise EncoderError(f"semantic model {exc}") from exc


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
        import pyarrow.compute as pc
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


def partitions_for(n: int, partition_size: int) -> int:
    """Number of k-means partitions: about ``partition_size`` vectors each, at least 1."""
    return max(1, math.ceil(n / partition_size))


@functools.cache
def gpu_resources():
    """FAISS GPU resources when FAISS sees a GPU (a faiss-gpu build on a GPU node), else None."""
    import faiss

    return faiss.StandardGpuResources() if faiss.get_num_gpus() > 0 else None


def _kmeans(x: np.ndarray, k: int, seed: int):
    import faiss

    kmeans = faiss.Kmeans(
        x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False,
        gpu=gpu_resources() is not None,
    )  # fmt: skip
    kmeans.train(x)
    return kmeans


def kmeans_partitions(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Partition of each row of ``x`` [N, D] (L2-normalised) by spherical k-means."""
    if k <= 1:
        return np.zeros(len(x), dtype=np.int64)
    _, assign = _kmeans(x, k, seed).index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def kmeans_centroids(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """[k, D] centroids of ``kmeans_partitions``'s k-means (same settings) over ``x``."""
    return np.asarray(_kmeans(x, k, seed).centroids, dtype=np.float32)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Partition of each row of ``x`` [N, D]: its nearest of ``centroids`` [k, D] by inner
    product, on the CPU. On the CPU this is the search ``kmeans_partitions`` runs (its index
    is an IndexFlatIP holding the centroids), whatever rows are searched together."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    _, assign = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return assign[:, 0].astype(np.int64)


# k-means needs no more than this many vectors per centroid: faiss.Kmeans itself samples down
# to it (max_points_per_centroid), so a sample of this size loses nothing it would use.
KMEANS_SAMPLE_PER_CENTROID = 256


def key_hashes(keys: list[str]) -> np.ndarray:
    """[N] uint64 hash of each key: the k-means sample's order, independent of the workers."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "big") for k in keys],
        dtype=np.uint64,
    )


def sample_limit(n: int, size: int) -> np.uint64:
    """Keys whose hash is at most this are the sample's candidates: all of them when ``size``
    >= ``n``, else about 1.25 ``size`` of the ``n`` (the ``size`` smallest hashes are kept)."""
    top = 2**64 - 1
    if size >= n:
        return np.uint64(top)
    return np.uint64(min(top, int(min(1.0, 1.25 * size / n + 1e-3) * 2**64)))


def resolve_partition(
    keys: list[str], areas: np.ndarray, x: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best-first resolution inside one k-means partition: (dropped rows, the row each names,
    their cosine), rows of the inputs. Pairs never cross partitions, so this decides what the
    driver path's global resolution decides for these rows."""
    order = priority_order(np.asarray(keys, dtype=object), areas)
    ranked = np.ascontiguousarray(x[order])  # [n, D], best first
    parts = np.zeros(len(ranked), dtype=np.int64)
    canonical = greedy_canonical(len(ranked), semantic_pairs(ranked, threshold, parts))
    ranks = np.flatnonzero(canonical != np.arange(len(ranked)))
    # one dot product at a time, as the driver path writes its detail
    cosine = np.array([float(ranked[r] @ ranked[canonical[r]]) for r in ranks])
    return order[ranks], order[canonical[ranks]], cosine


def semantic_pairs(x: np.ndarray, threshold: float, partitions: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, in the same partition with cosine >= ``threshold``; [P, 2] int64.

    ``x`` [N, D] float32 L2-normalised, so inner product is cosine. On a GPU: k-NN within the
    partition (FAISS has no GPU range search), exact unless a row has ``GPU_MAX_K`` neighbours
    at or above the threshold, in which case that partition is searched again on the CPU.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    resources = gpu_resources()
    out = []
    for part in np.unique(partitions):
        members = np.flatnonzero(partitions == part)
        if len(members) < 2:
            continue
        xm = np.ascontiguousarray(x[members])
        pairs = _gpu_pairs(resources, xm, threshold) if resources is not None else None
        if pairs is None:
            pairs = _cpu_pairs(xm, threshold)
        out.append(members[pairs])
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)


def _cpu_pairs(x: np.ndarray, threshold: float) -> np.ndarray:
    """Local pairs (i < j) with cosine >= threshold: FAISS IndexFlatIP range search."""
    import faiss

    # FAISS keeps inner products strictly above the radius: search just below, filter exactly
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, sims, found = index.range_search(x, radius)
    rows = np.repeat(np.arange(len(x)), np.diff(lims.astype(np.int64)))
    keep = (sims >= threshold) & (rows < found)
    return np.stack([rows[keep], found[keep]], axis=1)


def _gpu_pairs(resources, x: np.ndarray, threshold: float) -> np.ndarray | None:
    """As _cpu_pairs with a GPU brute-force k-NN; None when the k nearest may not hold every
    neighbour at or above the threshold (the k-th is itself at or above it)."""
    import faiss

    k = min(len(x), GPU_MAX_K)
    sims, found = faiss.knn_gpu(resources, x, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    if k < len(x) and bool((sims[:, -1] >= threshold).any()):
        return None
    rows = np.repeat(np.arange(len(x)), k)
    sims, found = sims.ravel(), found.ravel().astype(np.int64)
    keep = (sims >= threshold) & (rows < found)
    return np.stack([rows[keep], found[keep]], axis=1)
