"""`changenet spec <action>`: the printed default spec loads back unchanged, and its JSON Schema accepts the
defaults and refuses what load_spec refuses."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from changenet.cli import app
from changenet.config import load_spec
from changenet.config.help import ACTION_BLOCKS
from changenet.config.loader import default_config
from changenet.errors import SpecError

runner = CliRunner()
FILLED = {"dataset.segment.root_dir": "/data", "export.checkpoint": "model.pth", "export.onnx_file": "model.onnx",
          "gen_trt_engine.onnx_file": "model.onnx"}


def _blocks(cfg, action):
    whole = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    return {block: whole[block] for block in ACTION_BLOCKS[action]}


@pytest.mark.parametrize("action", list(ACTION_BLOCKS))
def test_printed_spec_loads_back_unchanged(action, tmp_path):
    result = runner.invoke(app, ["spec", action])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"{action}.yaml"
    path.write_text(result.output)
    # The printed spec says exactly what no spec says.
    assert _blocks(load_spec(path, [], action=action), action) == _blocks(load_spec(None, [], action=action), action)
    as_json = runner.invoke(app, ["spec", action, "--json"])
    assert json.loads(as_json.output) == _blocks(default_config(), action)


def _filled(spec):
    spec = copy.deepcopy(spec)
    for key, value in FILLED.items():
        node = spec
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.get(name, {})
        if node.get(leaf) == "???":
            node[leaf] = value
    return spec


@pytest.mark.parametrize("action", list(ACTION_BLOCKS))
def test_schema_accepts_the_defaults(action):
    schema = json.loads(runner.invoke(app, ["spec", action, "--schema"]).output)
    jsonschema.Draft202012Validator.check_schema(schema)
    spec = _filled(json.loads(runner.invoke(app, ["spec", action, "--json"]).output))
    jsonschema.validate(spec, schema)


@pytest.mark.parametrize("key, value", [
    ("gen_trt_engine.tensorrt.data_type", "INT4"),  # a choice
    ("gen_trt_engine.tensorrt.max_batch_size", 0),  # a range
    ("gen_trt_engine.tensorrt.unknown_key", 1),  # a key the schema does not have
])
def test_schema_refuses_what_load_spec_refuses(key, value, tmp_path):
    schema = json.loads(runner.invoke(app, ["spec", "gen_trt_engine", "--schema"]).output)
    spec = _filled(json.loads(runner.invoke(app, ["spec", "gen_trt_engine", "--json"]).output))
    node = spec
    *parents, leaf = key.split(".")
    for name in parents:
        node = node[name]
    node[leaf] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, schema)
    with pytest.raises(SpecError):
        load_spec(None, [f"{'+' if leaf == 'unknown_key' else ''}{key}={value}"], action="gen_trt_engine")


def test_the_schema_carries_types_defaults_and_help():
    schema = json.loads(runner.invoke(app, ["spec", "export", "--schema"]).output)
    opset = schema["properties"]["export"]["properties"]["opset_version"]
    assert opset["type"] == "integer" and opset["default"] == 17 and opset["description"]
    assert "checkpoint" in schema["properties"]["export"]["required"]


def test_unknown_action_is_one_line():
    result = runner.invoke(app, ["spec", "nope"])
    assert result.exit_code == 2 and "choose one of train" in result.output
