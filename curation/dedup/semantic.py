"""Semantic (embedding) dedup, SemDeDup style: embed, k-means partitions, cosine search inside.

Engine-free: ``ShardEmbedder`` is a callable class over one shard at a time (the shape of a
Ray Data actor-pool stage), ``semantic_pairs`` is plain FAISS. The model is the user's
TorchScript module: [N, 3, H, W] float images normalised with ImageNet mean/std -> [N, D].

Determinism: a shard's images are embedded in fixed chunks in key order, with a fixed number
of torch threads, so an embedding never depends on which worker or batch it landed in; the
k-means input is in priority order with a fixed seed.
"""

from __future__ import annotations

import io
import math

import numpy as np

from curation.storage import locate
from curation.writer import iter_shard
from schemas.layout import shard_file

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess(data: bytes, size: int) -> np.ndarray:
    """Image bytes -> [3, size, size] float32, whole image resized (no crop), ImageNet-normalised."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when it is large
    image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0  # [H, W, 3]
    return ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


class ShardEmbedder:
    """Ray Data stage: batch {"shard": [s], "keys": [[k, ...]]} -> {"key": [N], "embedding": [N, D]}.

    Reads the listed samples of shard ``s`` of ``dataset_uri``; embeddings are L2-normalised.
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
    ) -> None:
        import torch

        from curation.weights import resolve_file

        torch.set_num_threads(threads)
        self.torch, self.device = torch, device
        self.model = torch.jit.load(resolve_file(model), map_location=device).eval()
        self.dataset = locate(dataset_uri)
        self.image_size, self.chunk = image_size, chunk

    def __call__(self, batch: dict) -> dict:
        keys, vectors = [], []
        for shard, wanted in zip(batch["shard"], batch["keys"], strict=True):
            images = self._images(int(shard), set(wanted))
            for start in range(0, len(images), self.chunk):
                part = images[start : start + self.chunk]
                keys.extend(k for k, _ in part)
                vectors.append(self.embed([data for _, data in part]))
        return {"key": np.array(keys, dtype=object), "embedding": np.concatenate(vectors)}

    def embed(self, images: list[bytes]) -> np.ndarray:
        """[N, D] float32, L2-normalised embeddings of encoded images."""
        x = np.stack([preprocess(data, self.image_size) for data in images])  # [N, 3, S, S]
        with self.torch.inference_mode():
            out = self.model(self.torch.from_numpy(x).to(self.device))  # [N, D]
        out = out.float().cpu().numpy().reshape(len(images), -1)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _images(self, shard: int, wanted: set[str]) -> list[tuple[str, bytes]]:
        """(key, image bytes) of the wanted samples of the shard, in key order."""
        found = []
        for sample in iter_shard(self.dataset.join(shard_file(shard))):
            if sample["__key__"] in wanted:
                ext = next(k for k in sample if not k.startswith("__") and k != "json")
                found.append((sample["__key__"], sample[ext]))
        if len(found) != len(wanted):  # the manifest names samples the tar lacks
            missing = sorted(wanted - {key for key, _ in found})
            raise ValueError(f"shard {shard} lacks {len(missing)} samples, e.g. {missing[:3]}")
        return sorted(found)


def partitions_for(n: int, partition_size: int) -> int:
    """Number of k-means partitions: about ``partition_size`` vectors each, at least 1."""
    return max(1, math.ceil(n / partition_size))


def kmeans_partitions(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Partition of each row of ``x`` [N, D] (L2-normalised) by spherical k-means."""
    import faiss

    if k <= 1:
        return np.zeros(len(x), dtype=np.int64)
    kmeans = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return assign[:, 0].astype(np.int64)


def semantic_pairs(x: np.ndarray, threshold: float, partitions: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, in the same partition with cosine >= ``threshold``; [P, 2] int64.

    ``x`` [N, D] float32 L2-normalised, so inner product is cosine (FAISS IndexFlatIP).
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    # FAISS keeps inner products strictly above the radius: search just below, filter exactly
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    out = []
    for part in np.unique(partitions):
        members = np.flatnonzero(partitions == part)
        if len(members) < 2:
            continue
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[members])
        lims, sims, found = index.range_search(x[members], radius)
        rows = np.repeat(np.arange(len(members)), np.diff(lims.astype(np.int64)))
        keep = (sims >= threshold) & (rows < found)
        out.append(np.stack([members[rows[keep]], members[found[keep]]], axis=1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), dtype=np.int64)
