import hashlib
import json

from curation.sources import SourceConfig
from pipeline.plan import plan_id


def test_plan_id_changes_with_the_caption_column_and_not_for_its_default():
    config = SourceConfig(inputs=("urls.parquet",), url_column="URL")
    # the id plans had before --caption-column existed: their jobs still resume on them
    before = json.dumps({"inputs": ["urls.parquet"], "url_column": "URL"})
    assert plan_id(config) == hashlib.sha256(before.encode()).hexdigest()[:12]
    other = SourceConfig(inputs=("urls.parquet",), url_column="URL", caption_column="TEXT")
    assert plan_id(other) != plan_id(config)
