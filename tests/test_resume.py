"""Resuming: a resumed run ends where an uninterrupted one does, a killed run leaves a loadable checkpoint
and picks up from it, and a finished run is not trained again."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from changenet.actions.train import train
from changenet.model.checkpoint import (
    LATEST_CHECKPOINT_NAME,
    epoch_checkpoint_name,
    load_model_from_checkpoint,
    read_checkpoint,
)
from changenet.model.options import ModelOptions
from changenet.train.trainer import STATUS_FILE

# A narrow decoder at 32 x 32: what is tested here does not depend on the size, and it is 4x cheaper.
SMALL_MODEL = ("model.decode_head.decoder_params.embed_dim=32", "dataset.segment.img_size=32")


def status_epochs(results_dir: Path) -> list:
    return [json.loads(line)["epoch"] for line in (results_dir / STATUS_FILE).read_text().splitlines()]


def assert_same_tensors(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.allclose(first[key].float(), second[key].float(), rtol=0, atol=1e-6), key


def test_resumed_run_ends_with_the_same_weights(tiny_spec_factory, tmp_path, capsys):
    # Augmentation on and two loader workers: their random draws must follow the epoch, not the process.
    common = (*SMALL_MODEL, "train.num_epochs=3", "train.max_steps_per_epoch=2", "dataset.segment.workers=2")
    straight = tiny_spec_factory(*common, f"results_dir={tmp_path / 'straight'}")
    train(straight)
    straight_dir = Path(straight.train.results_dir)

    # Resume a second run from the straight run's checkpoint after epoch 1 (two of three epochs done).
    midway = straight_dir / epoch_checkpoint_name(1)
    resumed = tiny_spec_factory(
        *common, f"results_dir={tmp_path / 'resumed'}", f"train.resume_training_checkpoint_path={midway}"
    )
    capsys.readouterr()
    train(resumed)
    resumed_dir = Path(resumed.train.results_dir)
    assert f"resuming from '{midway}': epoch 001 done, continuing with epoch 002 of 3" in capsys.readouterr().out
    assert status_epochs(resumed_dir) == [2]

    end_straight = read_checkpoint(straight_dir / LATEST_CHECKPOINT_NAME).data
    end_resumed = read_checkpoint(resumed_dir / LATEST_CHECKPOINT_NAME).data
    assert end_straight["epoch"] == end_resumed["epoch"] == 2
    assert_same_tensors(end_straight["state_dict"], end_resumed["state_dict"])
    moments = [end["optimizer_states"][0]["state"] for end in (end_straight, end_resumed)]
    for index in moments[0]:
        assert_same_tensors(moments[0][index], moments[1][index])

    # Running the finished experiment again trains nothing and says why.
    before = (straight_dir / STATUS_FILE).read_text()
    train(straight)
    assert "has already trained all 3 epochs" in capsys.readouterr().out
    assert (straight_dir / STATUS_FILE).read_text() == before


def test_killed_run_resumes_from_its_latest_checkpoint(tiny_spec_factory, tmp_path):
    # Batches of 2: six steps an epoch, a wide window for the kill to land inside epoch 1.
    cfg = tiny_spec_factory(*SMALL_MODEL, "train.num_epochs=3", "dataset.segment.batch_size=2")
    spec = tmp_path / "spec.yaml"
    OmegaConf.save(cfg, spec)
    results = Path(cfg.train.results_dir)
    latest = results / LATEST_CHECKPOINT_NAME
    command = [sys.executable, "-m", "changenet.cli", "train", "-e", str(spec)]

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not latest.exists():
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.02)
        time.sleep(0.1)  # into epoch 1
        first.kill()  # SIGKILL: no clean-up of any kind
        first.wait()

    # The kill landed in epoch 1: the latest checkpoint is epoch 0's, whole and loadable.
    assert read_checkpoint(latest).epoch == 0
    load_model_from_checkpoint(latest, ModelOptions.from_spec(cfg))

    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"resuming from '{latest}': epoch 000 done, continuing with epoch 001 of 3" in second.stdout
    assert "Traceback" not in second.stderr
    assert read_checkpoint(latest).epoch == 2
    assert (results / epoch_checkpoint_name(2)).is_file()
    assert status_epochs(results) == [0, 1, 2]
    assert not [p for p in results.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_reports_a_user_error_in_one_line(tiny_spec_factory, tmp_path):
    command = [sys.executable, "-m", "changenet.cli", "train", f"dataset.segment.root_dir={tmp_path / 'nowhere'}",
               f"results_dir={tmp_path / 'results'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: dir '{tmp_path / 'nowhere'}' named by spec key 'dataset.segment.root_dir' does not exist"]


def test_tao_checkpoint_with_a_fitting_training_state_resumes(tiny_spec_factory, tmp_path, capsys):
    # TAO's trainer writes plain Lightning checkpoints: ours without the changenet entry and with TAO's
    # callback states is what a TAO run leaves. Its optimizer state fits (same parameter order).
    common = (*SMALL_MODEL, "train.max_steps_per_epoch=1")
    first = tiny_spec_factory(*common, "train.num_epochs=1", f"results_dir={tmp_path / 'first'}")
    train(first)
    data = torch.load(Path(first.train.results_dir) / LATEST_CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    data.pop("changenet")
    data["callbacks"] = {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {"dirpath": "/results/train"}}
    tao_file = tmp_path / "model_epoch_000_step_00001.pth"
    torch.save(data, tao_file)

    second = tiny_spec_factory(*common, "train.num_epochs=2", f"results_dir={tmp_path / 'second'}",
                               f"train.resume_training_checkpoint_path={tao_file}")
    capsys.readouterr()
    train(second)
    assert f"resuming from '{tao_file}': epoch 000 done, continuing with epoch 001 of 2" in capsys.readouterr().out
    assert status_epochs(Path(second.train.results_dir)) == [1]
    end = read_checkpoint(Path(second.train.results_dir) / LATEST_CHECKPOINT_NAME)
    assert end.epoch == 1 and end.data["global_step"] == 2  # one step in each of the two epochs
