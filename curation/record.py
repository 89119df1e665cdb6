"""The one record type that flows between curation stages: a column batch.

Stages take and return ``dict[str, np.ndarray]`` batches (Ray Data's "numpy" batch format;
plain dicts in unit tests). Every row carries ``status``: rows marked rejected keep flowing
(so that the writer can record them) but later stages leave them alone. A stage never drops a
row: it marks it with ``reject`` and one reason from ``schemas.reasons``.

The columns, the stage that fills each and their dtypes are declared in ``schemas.record``.
"""

from __future__ import annotations

import numpy as np

from schemas import Reason, Stage
from schemas.record import OK, REJECTED

__all__ = ["OK", "REJECTED", "Batch", "live", "object_column", "reject"]

Batch = dict[str, np.ndarray]


def object_column(values: list) -> np.ndarray:
    """An object array that keeps each value as is (np.array would stack equal-shape arrays)."""
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):  # element-wise, so ndarray and list values stay whole
        column[i] = value
    return column


def live(batch: Batch) -> np.ndarray:
    """Boolean mask of rows still in the running."""
    return batch["status"] == OK


def reject(batch: Batch, index: int, stage: Stage, reason: Reason, detail: str = "") -> None:
    """Mark row ``index`` rejected; the first rejection of a row wins."""
    if batch["status"][index] != OK:
        return
    batch["status"][index] = REJECTED
    batch["stage"][index] = str(stage)
    batch["reason"][index] = str(reason)
    batch["detail"][index] = detail[:2000]
