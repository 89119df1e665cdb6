"""Drop rows, and the rules over them once every pass has decided: following chains to the
sample finally kept, cluster sizes, earlier runs' rejections.

Each rule is a function over Arrow tables keyed by a partition column: given whole groups of
that column (any number of them) it decides for each group alone. So the driver path
(pipeline.dedup) calls it once on the whole table and the Ray path (pipeline.dedup_ray) inside
a groupby on that column (datatrove's split between a step and its executor), and both decide
the same.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas import Reason, Stage

# A drop row as every pass emits it (Parquet under <dataset>/_work/dedup/ on the Ray path).
DROP_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int64()),
        ("source_uri", pa.string()),
        ("reason", pa.string()),  # schemas.Reason value
        ("duplicate_of", pa.string()),  # the kept canonical (or the earlier release's key)
        ("detail", pa.string()),
    ]
)
DROP_COLUMNS = DROP_SCHEMA.names

# found_drops' input: a sample, the one it duplicates and their Hamming distance
FOUND_COLUMNS = ["key", "shard", "source_uri", "duplicate_of", "distance"]

# follow_chains' rows, keyed by ``link``: a drop's duplicate_of, or a later drop's key
CHAIN_SCHEMA = pa.schema([*DROP_SCHEMA, ("link", pa.string()), ("later", pa.bool_())])

# cluster_sizes' rows, keyed by ``canonical``: a sample (with its shard) or one naming it
NAMING_SCHEMA = pa.schema(
    [("canonical", pa.string()), ("shard", pa.int64()), ("member", pa.string())]
)
CLUSTER_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.int64()), ("size", pa.int32())])


def as_drops(batch: pa.Table) -> pa.Table:
    return batch.select(DROP_COLUMNS).cast(DROP_SCHEMA)


def without(table: pa.Table, keys: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Rows of ``table`` whose key is not in ``keys``."""
    if not len(keys):
        return table
    return table.filter(pc.invert(pc.is_in(table["key"], pa.chunked_array(keys).combine_chunks())))


def found_drops(found: pa.Table, reason: str, prefix: str = "") -> pa.Table:
    """Drop rows of pHash matches (FOUND_COLUMNS): ``{prefix}phash within {distance} bits``."""
    distance = found["distance"].cast(pa.string())
    detail = pc.binary_join_element_wise(f"{prefix}phash within ", distance, " bits", "")
    return as_drops(
        found.append_column(
            "reason", pa.array([reason] * found.num_rows, pa.string())
        ).append_column("detail", detail)
    )


def chain_rows(drops: pa.Table, *, later: bool) -> pa.Table:
    """``drops`` as follow_chains' rows: an earlier pass's drops are linked by the canonical
    they name, the later passes' (already final) drops by their own key."""
    drops = as_drops(drops)
    link = drops["key"] if later else drops["duplicate_of"]
    return drops.append_column("link", link).append_column(
        "later", pa.array([later] * drops.num_rows, pa.bool_())
    )


def follow_chains(rows: pa.Table) -> pa.Table:
    """Keyed by ``link`` (CHAIN_SCHEMA): the earlier pass's drops, each naming the sample
    finally kept, which is the one a later pass kept in place of the canonical it named
    (the later drops are final already, so one step is enough)."""
    is_later = rows["later"].combine_chunks()
    later = rows.filter(is_later).select(["key", "duplicate_of"])
    later = later.rename_columns(["named", "final"])
    drops = as_drops(rows.filter(pc.invert(is_later)))
    joined = drops.join(later, keys="duplicate_of", right_keys="named", join_type="left outer")
    final = pc.coalesce(joined["final"], joined["duplicate_of"])
    return as_drops(joined.set_column(DROP_COLUMNS.index("duplicate_of"), "duplicate_of", final))


def sample_naming(samples: pa.Table) -> pa.Table:
    """cluster_sizes' row of each sample of the dataset (key, shard): a possible canonical."""
    n = samples.num_rows
    return pa.table(
        [samples["key"].cast(pa.string()), samples["shard"].cast(pa.int64()),
         pa.nulls(n, pa.string())],
        schema=NAMING_SCHEMA,
    )  # fmt: skip


def drop_naming(drops: pa.Table) -> pa.Table:
    """cluster_sizes' row of each drop (key, duplicate_of): a member naming its canonical."""
    return pa.table(
        [drops["duplicate_of"].cast(pa.string()), pa.nulls(drops.num_rows, pa.int64()),
         drops["key"].cast(pa.string())],
        schema=NAMING_SCHEMA,
    )  # fmt: skip


def rejection_naming(rejections: pa.Table) -> pa.Table:
    """drop_naming of earlier runs' within-dataset dedup rejections (stage, reason, key,
    duplicate_of): an earlier release's sample is in no cluster of this dataset."""
    mine = pc.and_(
        pc.equal(rejections["stage"], str(Stage.DEDUP)),
        pc.not_equal(rejections["reason"], str(Reason.DUPLICATE_PREVIOUS_RELEASE)),
    )
    return drop_naming(rejections.filter(mine))


def cluster_sizes(rows: pa.Table) -> pa.Table:
    """Keyed by ``canonical`` (NAMING_SCHEMA): (key, shard, size) of each canonical that is a
    sample of the dataset and that someone names; its size is itself plus each distinct
    member (one named by an earlier run and by this one counts once)."""
    stats = rows.group_by("canonical").aggregate([("shard", "min"), ("member", "count_distinct")])
    found = stats.filter(
        pc.and_(pc.is_valid(stats["shard_min"]), pc.greater(stats["member_count_distinct"], 0))
    )
    size = pc.add(found["member_count_distinct"], 1).cast(pa.int32())
    return pa.table([found["canonical"], found["shard_min"], size], schema=CLUSTER_SCHEMA)
