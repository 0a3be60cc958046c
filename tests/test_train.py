"""Training on the tiny synthetic set: learning, checkpoint files, status.json, and clear errors for bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import NO_AUGMENTATION

from changenet.actions.train import train
from changenet.data import build_dataset
from changenet.data.options import DataOptions
from changenet.errors import DataError, ModelError, SpecError
from changenet.model.checkpoint import (
    LATEST_CHECKPOINT_NAME,
    METADATA_KEY,
    epoch_checkpoint_name,
    load_model_from_checkpoint,
    save_model_checkpoint,
)
from changenet.model.options import ModelOptions
from changenet.train.module import ChangeNetModule, linear_lr_factor, lr_scheduler
from changenet.train.trainer import STATUS_FILE, plan_devices, precision_for

# A narrow decoder at 32 x 32 (the synthetic pairs resized) keeps each run to seconds on a CPU.
SMALL_MODEL = ("model.decode_head.decoder_params.embed_dim=32", "dataset.segment.img_size=32")


def read_status(results_dir: Path) -> list:
    return [json.loads(line) for line in (results_dir / STATUS_FILE).read_text().splitlines()]


def changed_fraction(cfg) -> float:
    """Fraction of labelled pixels marked "change" in the split the validation loop scores."""
    labels = torch.stack([item["label"] for item in build_dataset(DataOptions.from_spec(cfg), "val")])
    labelled = labels != 255
    return float((labels[labelled] == 1).float().mean())


def write_checkpoint(path: Path, cfg, **meta_changes) -> Path:
    """A changenet checkpoint of an untrained model, its metadata entry changed by `meta_changes`."""
    from changenet.model import build_model

    save_model_checkpoint(build_model(ModelOptions.from_spec(cfg), load_pretrained=False), ModelOptions.from_spec(cfg), path)
    if meta_changes:
        checkpoint = torch.load(path, weights_only=True)
        checkpoint[METADATA_KEY].update(meta_changes)
        torch.save(checkpoint, path)
    return path


# --------------------------------------------------------------------------- training runs
@pytest.mark.learning
def test_short_training_learns(tiny_spec_factory, tmp_path, test_seed, record_figure):
    # Twelve pairs teach a network from scratch too little to generalise in a minute of CPU, so the
    # validation loop scores the training pairs: this checks that the loop learns, not the model's reach
    # (the README's 400-pair run measures that).
    from changenet.data.synth import generate_dataset

    root = tmp_path / "data"
    generate_dataset(root, img_size=64, num_classes=2, seed=test_seed, show_progress=False,
                     num_train=12, num_val=0, num_test=0, num_predict=0)
    cfg = tiny_spec_factory(
        *SMALL_MODEL, *NO_AUGMENTATION, f"dataset.segment.root_dir={root}", "dataset.segment.validation_split=train",
        "train.optim.lr=0.004", "train.optim.weight_decay=0.01", "train.num_epochs=40", "train.validation_interval=40",
        "train.checkpoint_interval=40", f"train.seed={test_seed}",
    )
    train(cfg)
    records = read_status(Path(cfg.train.results_dir))
    assert [r["epoch"] for r in records] == list(range(40))
    loss_ratio = records[-1]["train_loss"] / records[0]["train_loss"]
    # Predicting "no change" everywhere scores IoU 1 - p on no-change and 0 on change (p: changed share).
    trivial_miou = (1 - changed_fraction(cfg)) / 2
    record_figure("last / first training loss", loss_ratio, 0.6, "<")
    record_figure("val mIoU - all-no-change mIoU", records[-1]["val_miou"] - trivial_miou, 0.1, ">")
    assert loss_ratio < 0.6, "training loss did not fall"
    assert records[-1]["val_miou"] > trivial_miou + 0.1, (records[-1]["val_miou"], trivial_miou)


def test_checkpoints_status_and_latest(tiny_spec_factory, capsys):
    cfg = tiny_spec_factory(
        *SMALL_MODEL, "train.num_epochs=3", "train.max_steps_per_epoch=1",
        "train.checkpoint_interval=2", "train.validation_interval=2",
    )
    results = Path(cfg.train.results_dir)
    latest = train(cfg)

    assert latest == results / LATEST_CHECKPOINT_NAME
    # Checkpoints every 2nd epoch (0-based names), the latest after every epoch, no temporary files left.
    assert sorted(p.name for p in results.iterdir() if p.suffix == ".pth") == [
        LATEST_CHECKPOINT_NAME, epoch_checkpoint_name(1)]
    assert not [p for p in results.iterdir() if p.name.startswith(".")]
    assert not latest.is_symlink()

    records = read_status(results)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for record in records:
        assert record["train_loss"] > 0 and record["lr"] > 0 and record["time_s"] > 0
        assert set(record["train_loss_parts"]) == {"loss_p_c4", "loss_p_c3", "loss_p_c2", "loss_p_c1", "loss_final"}
    assert "val_miou" not in records[0] and "val_miou" not in records[2]  # validation every 2nd epoch
    assert 0.0 <= records[1]["val_miou"] <= 1.0 and 0.0 <= records[1]["val_acc"] <= 1.0
    # "linear" policy: lr x (1 - e / (num_epochs + 1))
    assert [r["lr"] for r in records] == pytest.approx([0.0005 * (1 - e / 4) for e in range(3)])

    checkpoint = torch.load(latest, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 2 and "optimizer_states" in checkpoint and "lr_schedulers" in checkpoint
    meta = checkpoint[METADATA_KEY]
    assert (meta["backbone"], meta["num_classes"], meta["img_size"], meta["embed_dim"]) == ("fan_tiny_8_p4_hybrid", 2, 32, 32)
    assert meta["feat_downsample"] is False and meta["class_names"] == ["no_change", "change"]
    assert checkpoint["tao_model"] == "visual_changenet_segment"  # TAO's marker: TAO's tools take the file

    model = load_model_from_checkpoint(latest, ModelOptions.from_spec(cfg))
    assert not model.training
    with torch.no_grad():
        outputs = model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    assert outputs[-1].shape == (1, 2, 32, 32)
    trained = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())

    out = capsys.readouterr()
    if not torch.cuda.is_available():
        assert [line for line in out.err.splitlines() if line.startswith("warning")] == [
            "warning: no CUDA GPU found: training on the CPU (train.num_gpus=1 ignored)"]
    assert "epoch 002/002" in out.out


# --------------------------------------------------------------------------- bad checkpoints
def test_load_model_accepts_a_changenet_checkpoint(tiny_spec_factory, tmp_path):
    cfg = tiny_spec_factory(*SMALL_MODEL)
    path = write_checkpoint(tmp_path / "ok.pth", cfg)
    assert not load_model_from_checkpoint(path, ModelOptions.from_spec(cfg)).training


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("plain_weights", "is not a model checkpoint (no 'state_dict' entry)"),
    ("text_file", "truncated or not a PyTorch file"),
    ("pickled_object", "holds pickled Python objects (pathlib.PosixPath)"),
    ("other_backbone", "holds a model with backbone fan_small_12_p4_hybrid, but the spec says "
                       "model.backbone.type=fan_tiny_8_p4_hybrid; set model.backbone.type=fan_small_12_p4_hybrid"),
    ("other_num_classes", "holds a model with num_classes 3, but the spec says dataset.segment.num_classes=2"),
    ("changenet_0.1", "was written by changenet 0.1.0, whose model was not TAO's"),
])
def test_load_model_rejects_with_one_clear_sentence(tiny_spec_factory, tmp_path, case, message):
    tiny_spec = tiny_spec_factory(*SMALL_MODEL)
    path = tmp_path / f"{case}.pth"
    if case == "plain_weights":
        torch.save({"weight": torch.zeros(3)}, path)
    elif case == "text_file":
        path.write_text("not a checkpoint\n")
    elif case == "pickled_object":
        torch.save({"state_dict": {}, "where": Path("/x")}, path)  # a Path: loads only with weights_only=False
    elif case == "other_backbone":
        write_checkpoint(path, tiny_spec, backbone="fan_small_12_p4_hybrid")
    elif case == "other_num_classes":
        write_checkpoint(path, tiny_spec, num_classes=3)
    elif case == "changenet_0.1":
        write_checkpoint(path, tiny_spec, format=1, changenet_version="0.1.0")
    with pytest.raises(ModelError) as error:
        load_model_from_checkpoint(path, ModelOptions.from_spec(tiny_spec))
    text = str(error.value)
    assert message in text and str(path) in text and "\n" not in text


def test_resume_checkpoint_for_another_backbone_is_refused(tiny_spec_factory, tmp_path):
    cfg = tiny_spec_factory(*SMALL_MODEL)
    results = Path(cfg.train.results_dir)
    results.mkdir(parents=True)
    write_checkpoint(results / LATEST_CHECKPOINT_NAME, cfg, backbone="fan_small_12_p4_hybrid")
    with pytest.raises(ModelError, match="holds a model with backbone fan_small_12_p4_hybrid, but the spec says"):
        train(cfg)


def test_missing_resume_checkpoint_names_the_key(tiny_spec_factory, tmp_path):
    cfg = tiny_spec_factory(f"train.resume_training_checkpoint_path={tmp_path / 'gone.pth'}")
    with pytest.raises(SpecError, match="gone.pth.*train.resume_training_checkpoint_path"):
        train(cfg)


# --------------------------------------------------------------------------- bad folders and data
def test_missing_dataset_root_names_the_key(tiny_spec_factory, tmp_path):
    with pytest.raises(SpecError, match="dataset.segment.root_dir"):
        train(tiny_spec_factory(f"dataset.segment.root_dir={tmp_path / 'nowhere'}"))


def test_results_dir_that_cannot_be_written(tiny_spec_factory, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores folder permissions: a path below a file fails for everyone
            (tmp_path / "afile").write_text("")
            target = tmp_path / "afile" / "sub"
        else:
            target = locked / "sub"
        with pytest.raises(SpecError, match="train.results_dir.*cannot be written"):
            train(tiny_spec_factory(f"train.results_dir={target}"))
    finally:
        locked.chmod(0o700)


def test_empty_split_list_is_a_data_error(tiny_spec_factory, tmp_path):
    root = tmp_path / "empty"
    for folder in ("A", "B", "label", "list"):
        (root / folder).mkdir(parents=True)
    (root / "list" / "train.txt").write_text("")
    (root / "list" / "val.txt").write_text("")
    with pytest.raises(DataError, match="train.txt' is empty"):
        train(tiny_spec_factory(f"dataset.segment.root_dir={root}"))


# --------------------------------------------------------------------------- settings
def _lrs(policy, num_epochs, epochs):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_scheduler(optimizer, policy, num_epochs)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_lr_policies():
    linear = linear_lr_factor(10)
    assert [linear(e) for e in (0, 5, 10)] == pytest.approx([1.0, 1 - 5 / 11, 1 - 10 / 11])
    assert _lrs("linear", 10, 3) == pytest.approx([1.0, 1 - 1 / 11, 1 - 2 / 11])
    assert _lrs("step", 9, 7) == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])  # x0.1 every 3 epochs
    assert _lrs("step", 2, 2) == pytest.approx([1, 0.1])  # num_epochs // 3 == 0: every epoch (TAO would fail)


@pytest.mark.parametrize("name, expected", [
    ("adamw", {"betas": (0.8, 0.9), "weight_decay": 0.05, "lr": 0.003}),
    ("adam", {"betas": (0.8, 0.9), "weight_decay": 0.05, "lr": 0.003}),
    ("sgd", {"momentum": 0.7, "weight_decay": 0.05, "lr": 0.003}),
])
def test_optimizer_follows_the_spec(tiny_spec_factory, name, expected):
    cfg = tiny_spec_factory(*SMALL_MODEL, f"train.optim.optim={name}", "train.optim.lr=0.003",
                            "train.optim.weight_decay=0.05", "train.optim.momentum=0.7", "train.optim.betas=[0.8,0.9]")
    module = ChangeNetModule(cfg, load_pretrained=False)
    config = module.configure_optimizers()
    optimizer = config["optimizer"]
    assert type(optimizer).__name__ == {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}[name]
    group = optimizer.param_groups[0]
    assert {key: group[key] for key in expected} == expected
    assert config["lr_scheduler"]["interval"] == "epoch"


def test_frozen_backbone_stays_unchanged_by_a_step(tiny_spec_factory):
    # TAO's optimizer covers every parameter (so its states line up with ours by position); a frozen
    # backbone gets no gradient, so the optimizer leaves it alone.
    cfg = tiny_spec_factory(*SMALL_MODEL, "model.backbone.freeze_backbone=true", "train.optim.weight_decay=0.5")
    module = ChangeNetModule(cfg, load_pretrained=False)
    optimizer = module.configure_optimizers()["optimizer"]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(module.model.parameters()))
    before = {k: v.clone() for k, v in module.model.backbone.state_dict().items()}
    outputs = module.model.train()(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    sum(o.mean() for o in outputs).backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in module.model.backbone.state_dict().items())
    assert any(p.grad is not None for p in module.model.decoder.parameters())


def test_device_plan(tiny_spec_factory, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = plan_devices(tiny_spec_factory())
    assert (cpu.accelerator, cpu.devices, cpu.distributed) == ("cpu", 1, False) and "CPU" in cpu.note
    with pytest.raises(SpecError, match="train.precision.*16-mixed"):
        precision_for(tiny_spec_factory("train.precision=16-mixed"), cpu)
    assert precision_for(tiny_spec_factory("train.precision=bf16-mixed"), cpu) == "bf16-mixed"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    two = plan_devices(tiny_spec_factory("train.num_gpus=2"))
    assert (two.accelerator, two.devices, two.distributed, two.note) == ("gpu", [0, 1], True, None)
    assert plan_devices(tiny_spec_factory("train.gpu_ids=[1]")).devices == [1]
    with pytest.raises(SpecError, match="train.gpu_ids.*GPU 3"):
        plan_devices(tiny_spec_factory("train.gpu_ids=[0,3]"))
