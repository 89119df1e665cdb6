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

from pipeline.sink import Output, SampleWriter, WriteStats


class ShardDatasink(ray.data.Datasink[WriteStats]):
    """Writes the stream's rows to ``output``; ``counter``: the job's ``ProgressCounter``
    (shard numbers)."""

    def __init__(self, output: Output, counter: Any) -> None:
        self.output = output
        self.counter = counter
        self.stats: list[WriteStats] = []

    @property
    def min_bytes_per_write(self) -> int:
        return self.output.max_bytes

    def write(self, blocks, ctx) -> WriteStats:
        name = f"{self.output.run_id}-{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}"
        writer = SampleWriter(self.output, self.counter, name)
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
