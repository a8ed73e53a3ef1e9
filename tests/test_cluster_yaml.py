"""A12: cluster.yaml passes Ray's own cluster-config validation, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _load() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates() -> None:
    config = prepare_config(_load())  # fills provider defaults from Ray's own files
    validate_config(config)
    assert config["head_node_type"] in config["available_node_types"]
    workers = config["available_node_types"]["spot_worker"]
    assert workers["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert any("blockpoint" in c for c in config["setup_commands"])


def test_validation_is_real() -> None:
    """The same check rejects a broken config, so the test above can fail."""
    config = copy.deepcopy(_load())
    config["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(config))
    config = copy.deepcopy(_load())
    config["unknown_top_level_field"] = 1
    with pytest.raises(Exception, match="unknown_top_level_field"):
        validate_config(prepare_config(config))
