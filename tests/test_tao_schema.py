"""TAO 7.3's own Visual ChangeNet schema (nvidia-tao-core) against ours: TAO's full default spec loads for
every action, and every TAO field has TAO's type and default here unless config.tao_compat.TAO_DIFFERENCES
says why not."""

import dataclasses
import os
import typing
from importlib import metadata
from typing import Any, Dict, Tuple, Union

import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from changenet.cli import app
from changenet.config import ACTIONS, is_set, load_spec
from changenet.config.schema import ExperimentConfig
from changenet.config.tao_compat import TAO_DIFFERENCES, settings_without_effect

TAO_VERSION = "7.3.0"
INSTALL = f"pip install --no-deps nvidia-tao-core=={TAO_VERSION}"


@pytest.fixture(scope="module")
def tao_schema() -> type:
    """TAO's ExperimentConfig dataclass; fails (CI sets CHANGENET_REQUIRE_TAO_REFERENCE=1) or skips without it."""
    try:
        from nvidia_tao_core.config.visual_changenet.default_config import ExperimentConfig as TaoExperimentConfig

        version = metadata.version("nvidia-tao-core")
    except ImportError as exc:
        message = f"TAO's schema is not importable ({exc}); install it with `{INSTALL}`"
    else:
        if version == TAO_VERSION:
            return TaoExperimentConfig
        message = f"nvidia-tao-core {version} found, TAO_DIFFERENCES is for {TAO_VERSION}; install it with `{INSTALL}`"
    if os.environ.get("CHANGENET_REQUIRE_TAO_REFERENCE") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def tao_default_spec(tao_schema, tmp_path):
    """TAO's full default spec, as `OmegaConf.structured(ExperimentConfig)` writes it."""
    path = tmp_path / "tao7.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(tao_schema)))
    return path


# --------------------------------------------------------------------------- TAO's default spec runs
@pytest.mark.parametrize("action", ACTIONS)
def test_tao_default_spec_loads_for_every_action(tao_default_spec, action):
    cfg = load_spec(tao_default_spec, [], action=action)
    assert list(cfg.dataset.classify.augmentation_config.random_rotate.angle_list) == [90.0, 180.0, 270.0]
    # TAO's '' paths mean unset: outputs under /results, not /<action>; no dataset in the working directory
    assert cfg[action].results_dir == f"/results/{action}"
    assert not is_set(cfg, "dataset.segment.root_dir")
    # TAO's defaults of the fields without effect here are ours: nothing to warn about
    assert settings_without_effect(cfg, action) == []


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_evaluate_with_tao_default_spec_asks_for_a_model_then_for_data(tao_default_spec, tmp_path):
    runner = CliRunner()
    assert "evaluate.checkpoint" in _one_error_line(runner.invoke(app, ["evaluate", "-e", str(tao_default_spec)]))
    model = f"evaluate.checkpoint={tmp_path / 'model.pth'}"
    result = runner.invoke(app, ["evaluate", "-e", str(tao_default_spec), model])
    assert "dataset.segment.root_dir" in _one_error_line(result)


# --------------------------------------------------------------------------- field by field
def _type_name(hint: Any) -> str:
    """A type hint written out: Optional[List[float]], Dict[str, int], block (a nested dataclass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        rest = [a for a in args if a is not type(None)]
        inner = _type_name(rest[0]) if len(rest) == 1 else f"Union[{', '.join(map(_type_name, rest))}]"
        return f"Optional[{inner}]" if len(rest) < len(args) else inner
    if origin is list:
        return f"List[{_type_name(args[0]) if args else 'Any'}]"
    if origin is dict:
        return f"Dict[{', '.join(map(_type_name, args))}]" if args else "Dict"
    if dataclasses.is_dataclass(hint):
        return "block"
    return "Any" if hint is Any else getattr(hint, "__name__", str(hint))


def schema_fields(root: type) -> Dict[str, Tuple[str, Any]]:
    """Dotted key -> (type, default) of every field, blocks included (default "block").

    Nested blocks are walked through their default objects, as OmegaConf does: TAO's `export` is typed
    ExportConfig but defaults to an ExportExpConfig, which adds fields. Defaults are those of the typed
    config (TAO's [90, 180, 270] of a List[float] is [90.0, 180.0, 270.0]); "???" is required.
    """
    table: Dict[str, Tuple[str, Any]] = {}

    def walk(cls: type, values: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            key = prefix + item.name
            if item.default_factory is not dataclasses.MISSING:
                default = item.default_factory()
            else:
                default = item.default
            value = values.get(item.name) if isinstance(values, dict) else None
            if dataclasses.is_dataclass(default):
                table[key] = (_type_name(hints[item.name]), "block")
                walk(type(default), value, key + ".")
            else:
                table[key] = (_type_name(hints[item.name]), value)

    walk(root, OmegaConf.to_container(OmegaConf.structured(root)), "")
    return table


def differences(tao_schema: type) -> Dict[str, str]:
    """Key -> "TAO <type> = <default>; ours ..." for every TAO field whose type or default differs here."""
    ours, found = schema_fields(ExperimentConfig), {}
    for key, (tao_type, tao_default) in schema_fields(tao_schema).items():
        if key not in ours:
            found[key] = f"TAO {tao_type} = {tao_default!r}; missing here"
        elif ours[key] != (tao_type, tao_default):
            our_type, our_default = ours[key]
            found[key] = f"TAO {tao_type} = {tao_default!r}; ours {our_type} = {our_default!r}"
    return found


def test_every_tao_field_matches_ours_or_is_listed(tao_schema):
    unlisted = {key: diff for key, diff in differences(tao_schema).items() if key not in TAO_DIFFERENCES}
    assert not unlisted, "fields differing from TAO 7.3's schema, not listed in tao_compat.TAO_DIFFERENCES:\n" + \
        "\n".join(f"  {key}: {diff}" for key, diff in unlisted.items())


def test_every_listed_difference_is_one(tao_schema):
    stale = sorted(set(TAO_DIFFERENCES) - set(differences(tao_schema)))
    assert not stale, f"tao_compat.TAO_DIFFERENCES lists keys that match TAO 7.3's schema now (remove them): {stale}"


def test_the_walk_sees_all_of_tao(tao_schema):
    fields = schema_fields(tao_schema)
    leaves = [key for key, (_, default) in fields.items() if default != "block"]
    assert len(leaves) >= 200  # TAO 7.3 has 202
    assert fields["export.serialize_nvdsinfer"] == ("bool", False)  # from the default's subclass
    assert fields["dataset.segment.augmentation.random_rotate.angle_list"] == ("List[float]", [90.0, 180.0, 270.0])
    assert fields["wandb.name"] == ("str", "TAO Toolkit training experiment")  # a default built with arguments
