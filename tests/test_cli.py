"""The command line: TAO-style actions, help with spec fields, one-line errors."""

import pytest
from typer.testing import CliRunner

from changenet.actions import ACTIONS
from changenet.cli import app

runner = CliRunner()


def test_help_lists_every_action():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for action in list(ACTIONS) + ["dataset"]:
        assert action in result.output


@pytest.mark.parametrize("action", list(ACTIONS))
def test_action_help_shows_spec_fields(action):
    result = runner.invoke(app, [action, "-e", "specs/train_fan_levir.yaml", "--help"])
    assert result.exit_code == 0
    assert "Spec fields read by" in result.output
    assert "results_dir" in result.output


def test_bad_override_is_one_line_without_traceback():
    result = runner.invoke(app, ["train", "-e", "specs/train_fan_levir.yaml", "train.num_epoch=2"])
    assert result.exit_code == 2
    assert "did you mean 'train.num_epochs'" in result.output
    assert "Traceback" not in result.output


def test_unknown_task_is_refused():
    result = runner.invoke(app, ["evaluate", "-e", "specs/test_fan_levir.yaml", "task=detect"])
    assert result.exit_code == 2
    assert "segment or classify" in result.output


def test_missing_model_source_is_reported():
    result = runner.invoke(app, ["evaluate", "-e", "specs/train_fan_levir.yaml"])
    assert result.exit_code == 2
    assert "evaluate.checkpoint" in result.output


def test_debug_shows_the_traceback_of_a_user_error(monkeypatch):
    monkeypatch.delenv("CHANGENET_DEBUG", raising=False)
    result = runner.invoke(app, ["--debug", "train", "-e", "specs/train_fan_levir.yaml", "train.num_epoch=2"])
    assert result.exit_code == 2
    assert "Traceback" in result.output and "did you mean 'train.num_epochs'" in result.output


def test_a_bug_prints_its_traceback_and_exit_code_1(monkeypatch):
    import changenet.cli as cli

    monkeypatch.delenv("CHANGENET_DEBUG", raising=False)

    def broken_action(cfg):
        raise ZeroDivisionError("an internal mistake")

    monkeypatch.setattr(cli, "_load_entry_point", lambda action: broken_action)
    result = runner.invoke(app, ["export", "-e", "specs/train_fan_levir.yaml"])
    assert result.exit_code == 1
    assert "Traceback" in result.output and "ZeroDivisionError: an internal mistake" in result.output
    assert "a bug in changenet" in result.output


@pytest.mark.parametrize("failure, words", [
    (RuntimeError("DataLoader worker (pid 14371) is killed by signal: Terminated. "), "stopped from outside"),
    (MemoryError(), "out of memory"),
])
def test_what_the_machine_did_is_one_line_not_a_bug_report(monkeypatch, failure, words):
    import changenet.cli as cli

    monkeypatch.delenv("CHANGENET_DEBUG", raising=False)

    def action(cfg):
        raise failure

    monkeypatch.setattr(cli, "_load_entry_point", lambda name: action)
    result = runner.invoke(app, ["export", "-e", "specs/train_fan_levir.yaml"])
    assert result.exit_code == 1 and words in result.output
    assert "Traceback" not in result.output and "a bug in changenet" not in result.output
