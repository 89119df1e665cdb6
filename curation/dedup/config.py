"""Configuration of the global dedup pass (``pipeline.dedup.run_dedup``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class DedupConfig:
    exact: bool = field(default=True, metadata={"help": "drop byte-identical copies (sha256)"})
    pixels: bool = field(
        default=True, metadata={"help": "drop identical decoded pixels in another encoding"}
    )
    near: bool = field(
        default=True, metadata={"help": "drop perceptual near-duplicates (64-bit pHash)"}
    )
    # 8 bits: the planted-duplicate tests find all re-encodes, resizes and colour shifts and
    # most 5% crops within 8, while distinct look-alike images stay above 12 (tests print both).
    radius: int = field(
        default=8, metadata={"help": "Hamming radius (bits of 64) for near-duplicates"}
    )
    near_recall: float = field(
        default=0.99,
        metadata={
            "help": "sampled-bit search, used above radius 8 only: recall of pairs exactly "
            "`radius` bits apart (up to radius 8 the covering search finds every pair)"
        },
    )
    exact_below: int = field(
        default=30_000, metadata={"help": "brute-force (exact) near search below this many hashes"}
    )
    near_tasks: int = field(
        default=4, metadata={"help": "Ray tasks the banded search tables are spread over"}
    )
    read_blocks: int = field(
        default=0, metadata={"help": "Ray Data blocks to read the manifests into (0: automatic)"}
    )
    # Below this the Ray start-up (worker processes, shuffle actors) costs more than the work:
    # a few hundred samples spent 40-90 s in a 200-partition shuffle and 20 s in rewrite tasks.
    ray_above: int = field(
        default=50_000,
        metadata={
            "help": "use Ray for exact/pixel grouping and shard rewrites above this many rows "
            "(below: on the driver, where the signatures already are)"
        },
    )
    rows_per_partition: int = field(
        default=500_000, metadata={"help": "hash-shuffle partitions: one per this many rows"}
    )
    semantic: bool = field(
        default=False, metadata={"help": "embedding dedup (SemDeDup); needs semantic_model"}
    )
    semantic_model: str | None = field(
        default=None,
        metadata={
            "help": "image encoder (path or s3://): this project's exported MAE encoder "
            "(python -m training.checkpoint) or a TorchScript module, [N,3,H,W] ImageNet-"
            "normalised -> [N,D]"
        },
    )
    semantic_threshold: float = field(
        default=0.95, metadata={"help": "cosine similarity at or above which images are duplicates"}
    )
    semantic_image_size: int = field(
        default=0,
        metadata={
            "help": "side the images are resized to for the encoder (0: the MAE encoder's own "
            "training size, 224 for TorchScript)"
        },
    )
    semantic_chunk: int = field(
        default=32, metadata={"help": "images per encoder call (within one shard)"}
    )
    semantic_actors: int = field(default=1, metadata={"help": "encoder actors (Ray Data pool)"})
    semantic_threads: int = field(
        default=1, metadata={"help": "torch threads (and CPUs) per encoder actor"}
    )
    semantic_gpus: float = field(default=0.0, metadata={"help": "GPUs per encoder actor (0: CPU)"})
    semantic_partition_size: int = field(
        default=10_000, metadata={"help": "k-means partitions of about this many embeddings"}
    )
    semantic_seed: int = field(default=0, metadata={"help": "k-means seed"})
    against: tuple[str, ...] = field(
        default=(), metadata={"help": "earlier datasets whose dedup_index must not be re-admitted"}
    )
    write_index: bool = field(
        default=True, metadata={"help": "write <dataset>/dedup_index/ for later --dedup-against"}
    )

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 32:
            raise ValueError(f"radius must be in [0, 32], got {self.radius}")
        if not 0.5 <= self.near_recall < 1.0:
            raise ValueError(f"near_recall must be in [0.5, 1), got {self.near_recall}")
        if self.exact_below < 0 or self.near_tasks < 1 or self.read_blocks < 0:
            raise ValueError("exact_below and read_blocks must be >= 0, near_tasks >= 1")
        if not -1.0 <= self.semantic_threshold <= 1.0:
            raise ValueError("semantic_threshold is a cosine similarity, in [-1, 1]")
        if self.ray_above < 0 or self.rows_per_partition < 1:
            raise ValueError("ray_above must be >= 0 and rows_per_partition >= 1")
        if self.semantic and not self.semantic_model:
            raise ValueError("semantic dedup needs semantic_model (an encoder file)")
        if self.semantic_image_size < 0:
            raise ValueError("semantic_image_size must be >= 0 (0: the encoder's own)")
        if min(self.semantic_chunk, self.semantic_actors) < 1:
            raise ValueError("semantic_chunk and semantic_actors must be >= 1")
        if self.semantic_threads < 1 or self.semantic_partition_size < 2:
            raise ValueError("semantic_threads must be >= 1, semantic_partition_size >= 2")
        self.against = tuple(self.against)
