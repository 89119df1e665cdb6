"""ray_cluster.yaml passes Ray's own autoscaler config validation and has the node types we need."""

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[1] / "ray_cluster.yaml"


def test_cluster_config_is_valid_for_the_ray_autoscaler():
    config = yaml.safe_load(CONFIG.read_text())
    validate_config(prepare_config(config))  # what `ray up` does first; raises on violations
    types = config["available_node_types"]
    assert config["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    assert set(types) == {"head", "cpu_crawler", "gpu_worker"}
    assert "g6e" in types["gpu_worker"]["node_config"]["InstanceType"]  # has an NVIDIA GPU
    assert any("uv sync --locked" in cmd for cmd in config["setup_commands"])


def test_validation_catches_a_broken_config():
    config = yaml.safe_load(CONFIG.read_text())
    config["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception, match="many"):
        validate_config(prepare_config(config))
