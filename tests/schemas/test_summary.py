"""summary.json's typed config: what the job writes is what readers get back, under fixed keys."""

import json
from pathlib import Path

import pytest

from curation.detect import DetectorConfig
from schemas import SchemaError
from schemas.summary import KeepRule, SummaryConfig, config_of, validate_summary
from tests.support.datasets import DETECTOR_WEIGHTS, build_dataset


def test_the_jobs_summary_holds_its_keep_rule_under_fixed_keys(tmp_path):
    built = build_dataset(str(tmp_path / "d"), num_samples=4, num_rejections=2)
    written = json.loads(Path(built.uri, "summary.json").read_text())
    config = config_of(written)
    assert config.detector == DETECTOR_WEIGHTS and config.dedup is True
    assert config.keep_rule == DetectorConfig().rule() == KeepRule()  # one set of defaults
    assert config.job["detector"]["weights"] == DETECTOR_WEIGHTS  # the whole config, for people
    assert SummaryConfig.from_dict(config.to_dict()) == config
    assert written["config"] == config.to_dict()


def test_a_job_without_detector_records_no_rule(tmp_path):
    built = build_dataset(str(tmp_path / "d"), num_samples=4, num_rejections=0, detector=False)
    config = config_of(built.summary)
    assert config.detector is None and config.keep_rule is None


def test_a_config_that_does_not_fit_is_refused_by_name(tmp_path):
    summary = build_dataset(str(tmp_path / "d"), num_samples=4, num_rejections=0).summary
    config = summary["config"]
    bad = [
        ({k: v for k, v in config.items() if k != "keep_rule"}, r"missing \['keep_rule'\]"),
        (dict(config, min_side=300), r"unknown \['min_side'\]"),
        (dict(config, keep_rule=dict(config["keep_rule"], min_score=1.5)), "min_score"),
        (dict(config, keep_rule=dict(config["keep_rule"], side=1)), "unexpected keyword"),
        (dict(config, dedup="yes"), "dedup must be a boolean"),
        (dict(config, classifiers="tint"), "classifiers is str"),
        (dict(config, detector=None), "detector and keep_rule go together"),
        ([1, 2], "'config' is list"),
    ]
    for value, message in bad:
        with pytest.raises(SchemaError, match=message):
            validate_summary(dict(summary, config=value))
    # a subset of a dataset without a summary records no config; a 1.0 summary an untyped one
    validate_summary(dict(summary, config=None))
    assert config_of(dict(summary, schema_version="1.0", config=config["job"])) is None
