"""The one record type that flows between curation stages: a column batch.

Stages take and return ``dict[str, np.ndarray]`` batches (Ray Data's "numpy" batch format;
plain dicts in unit tests). Every row carries ``status``: rows marked rejected keep flowing
(so that the writer can record them) but later stages leave them alone. A stage never drops a
row: it marks it with ``reject`` and one reason from ``schemas.reasons``.

Columns, by the stage that fills them (object arrays unless noted):
    source:   key, source_uri, caption, license, attribution, page_url, extra (JSON str)
    all:      status ("ok" | "rejected"), stage, reason, detail
    fetch:    image (original bytes), http_status (int16, -1 when not HTTP), fetched_at (us)
    validate: format, mode, width, height (int32, oriented), sha256, num_bytes (int64)
    signatures (validate pass, same decode): pixel_hash (str), phash (uint64)
    detect input (validate pass, same decode): det_input (HxWx3 uint8 RGB, long side = the
              detector's input size; an empty (0, 0, 3) array when not needed or rejected)
    prefilter: prefilter (list of {classifier, label, score} dicts or None)
    detect:   persons (list of PERSON_BOX dicts or None), num_persons (int16), detector (JSON)
"""

from __future__ import annotations

import numpy as np

from schemas import Reason, Stage

Batch = dict[str, np.ndarray]

OK = "ok"
REJECTED = "rejected"


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
