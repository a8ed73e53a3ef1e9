"""A12: cluster.yaml passes Ray's own cluster-config validation, offline."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import tomllib
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


# -- what Ray does not check (issue 10, part 4) ---------------------------------------------
ROOT = CLUSTER_YAML.parent
TOKEN_PATH = "~/.ray/auth_token"   # Ray's default token file, on every node and the client
KEY_PATH = "~/.blockpoint/checkpoint_key"  # the checkpoint key file, on every node


def test_region_set_and_zones_in_it() -> None:
    provider = _load()["provider"]
    region = provider["region"]
    assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", region)
    for zone in provider["availability_zone"].split(","):
        assert zone.startswith(region), zone


def test_head_on_demand_workers_spot() -> None:
    types = _load()["available_node_types"]
    head = types[_load()["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"]
    workers = [t for name, t in types.items() if name != _load()["head_node_type"]]
    assert workers and all(
        t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers)


def test_store_url_exported_and_valid() -> None:
    from blockstore import parse_store_url

    config = _load()
    found = [m.group(1) for c in config["setup_commands"]
             for m in [re.search(r"export BLOCKPOINT_STORE_URL=\"([^\"]+)\"", c)] if m]
    assert len(found) == 1, "setup_commands must export BLOCKPOINT_STORE_URL once"
    url = parse_store_url(found[0])  # a bad URL raises, naming the part
    assert url.is_object_store, "every node must reach the store: not a local path"
    if url.scheme == "s3":
        assert url.option("region") == config["provider"]["region"]


def test_install_step_points_at_this_checkout() -> None:
    config = _load()
    mounts = {r: v for r, v in config["file_mounts"].items() if r not in (TOKEN_PATH, KEY_PATH)}
    for remote, local in mounts.items():
        assert (ROOT / local).exists(), f"file mount {remote}: {local} does not exist"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "blockpoint"
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    remote_root = {Path(r).parent for r in mounts}
    assert len(remote_root) == 1, "the sources mount under one directory"
    root = remote_root.pop()
    mounted = {Path(r).name for r in mounts}
    assert packages | {"pyproject.toml", project["project"]["readme"]} <= mounted
    installs = [shlex.split(c.replace("$HOME", "~")) for c in config["setup_commands"]
                if "pip install" in c]
    targets = [a for cmd in installs for a in cmd[2:] if not a.startswith("-")]
    assert f"{root}[s3]" in targets, f"no pip install of {root}[s3] in {targets}"
    assert "blockpoint" not in targets, "blockpoint is not on the package index"
    import ray
    assert f"ray[default]=={ray.__version__}" in targets  # nodes run the Ray we test with


def test_token_auth_on_every_node() -> None:
    """Ray's token authentication: the one token reaches every node, every `ray start` runs
    with RAY_AUTH_MODE=token, and jobs and drivers on the nodes send it too."""
    config = _load()
    assert config["file_mounts"].get(TOKEN_PATH) == TOKEN_PATH, \
        "the operator's ~/.ray/auth_token must be mounted at the same path on every node"
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
              for c in config[key] if "ray start" in c]
    assert len(starts) == 2
    for command in starts:
        words = shlex.split(command)
        assert words[0] == "RAY_AUTH_MODE=token" and words[1:3] == ["ray", "start"], command
    setup = " ".join(config["setup_commands"])
    assert "export RAY_AUTH_MODE=token" in setup and "chmod 600 ~/.ray/auth_token" in setup
    header = CLUSTER_YAML.read_text().split("cluster_name:")[0]
    assert "ray get-auth-token --generate" in header, "the header says how to make the token"


def test_checkpoint_key_file_on_every_node() -> None:
    """The MAC key reaches every node as a 0600 file named by BLOCKPOINT_CHECKPOINT_KEY_FILE
    in the nodes' environment - never as a value in a runtime env (Ray's job table shows
    those) - and nothing in the config holds a key itself."""
    config = _load()
    assert config["file_mounts"].get(KEY_PATH) == KEY_PATH, \
        "the operator's key file must be mounted at the same path on every node"
    setup = " ".join(config["setup_commands"])
    assert "chmod 600 ~/.blockpoint/checkpoint_key" in setup
    exported = re.findall(r"export BLOCKPOINT_CHECKPOINT_KEY_FILE=\"([^\"]+)\"", setup)
    assert exported == ["$HOME/.blockpoint/checkpoint_key"], exported
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"BLOCKPOINT_CHECKPOINT_KEY(=|:)", text), "a key value in cluster.yaml"
    header = text.split("cluster_name:")[0]
    assert "~/.blockpoint/checkpoint_key" in header, "the header says how to make the key file"
