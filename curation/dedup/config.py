"""Configuration of the global dedup pass (``pipeline.dedup.run_dedup``)."""

from __future__ import annotations

from dataclasses import dataclass, field

INDEX_DIR = "dedup_index"  # <dataset>/dedup_index/: signatures of the kept samples


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
        metadata={"help": "banded search: recall of pairs exactly `radius` bits apart"},
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
    semantic: bool = field(
        default=False, metadata={"help": "embedding dedup (SemDeDup); not implemented yet"}
    )
    semantic_model: str | None = field(
        default=None, metadata={"help": "TorchScript image encoder for semantic dedup"}
    )
    semantic_threshold: float = field(
        default=0.95, metadata={"help": "cosine similarity at or above which images are duplicates"}
    )
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
        if self.semantic:
            raise NotImplementedError(
                "semantic dedup is not implemented yet (issue 4, item 4); run without it"
            )
        self.against = tuple(self.against)
