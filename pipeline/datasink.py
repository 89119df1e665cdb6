"""The Ray Data end of the stream with filter stages: a Datasink whose write tasks each
write a bundle of at least one shard's worth of bytes (``pipeline.sink.SampleWriter``).

Write tasks are not retried by Ray: a retry would write the same samples twice; a rerun of the
job resumes instead.
"""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import ray.data

from pipeline.sink import SampleWriter, WriteStats


class ShardDatasink(ray.data.Datasink[WriteStats]):
    """Writes the stream's rows; ``counter``: the job's ``ProgressCounter`` (shard numbers),
    ``columns``: the plan's kept input columns (``pipeline.plan.Plan.columns``)."""

    def __init__(
        self,
        output_uri: str,
        max_samples: int,
        max_bytes: int,
        counter: Any,
        run_id: str,
        columns: pa.Schema | None = None,
    ) -> None:
        self.output_uri = output_uri
        self.columns = columns
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.counter = counter
        self.run_id = run_id
        self.stats: list[WriteStats] = []

    @property
    def min_bytes_per_write(self) -> int:
        return self.max_bytes

    def write(self, blocks, ctx) -> WriteStats:
        name = f"{self.run_id}-{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}"
        writer = SampleWriter(
            self.output_uri, self.max_samples, self.max_bytes, self.counter, name, self.columns
        )
        try:
            for block in blocks:
                for row in _rows(block):
                    writer.add(row)
            return writer.close()
        finally:
            writer.discard()

    def on_write_complete(self, write_result) -> None:
        self.stats = list(write_result.write_returns)


def _rows(block: pa.Table) -> list[dict]:
    """Rows of a block as dicts (Ray Data blocks are Arrow tables or pandas frames)."""
    if isinstance(block, pa.Table):
        return block.to_pylist()
    return block.to_dict("records")
