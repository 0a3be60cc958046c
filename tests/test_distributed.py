"""Multi-process training on the CPU (DDP over gloo), as a multi-GPU spec runs: data sharding, metrics
summed over processes, one writer, resume, two "nodes" over loopback; TAO 7's checkpoint fields."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy

from changenet.config.loader import load_spec
from changenet.data.synth import generate_dataset
from changenet.train.datamodule import ChangeDataModule
from changenet.train.trainer import build_trainer, plan_devices

SIZE = 32


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "data"
    generate_dataset(root, num_train=16, num_val=6, num_test=2, num_predict=2, img_size=SIZE, seed=5, show_progress=False)
    return root


def overrides(root: Path, results: Path, *extra: str) -> list:
    return [f"dataset.segment.root_dir={root}", f"dataset.segment.img_size={SIZE}",
            "model.backbone.type=fan_tiny_8_p4_hybrid", "model.decode_head.decoder_params.embed_dim=16", "dataset.segment.batch_size=4",
            "dataset.segment.workers=0", f"results_dir={results}", "train.num_epochs=2", *extra]


def run(action: str, *args: str, env=None, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "changenet.cli", action, *args], capture_output=True, text=True,
                          timeout=600, env=env, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def status(results: Path) -> list:
    return [json.loads(line) for line in (results / "train" / "status.json").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the plan and the sharding
def test_cpu_accelerator_plans_one_process_per_requested_gpu(ddp_root, tmp_path):
    cfg = load_spec(None, overrides(ddp_root, tmp_path, "train.accelerator=cpu", "train.num_gpus=1",
                                    "train.gpu_ids=[0,1]", "train.sync_batchnorm=true"))
    plan = plan_devices(cfg)
    assert (plan.accelerator, plan.devices, plan.distributed) == ("cpu", 2, True)  # gpu_ids imply more: TAO's rule
    trainer = build_trainer(cfg, tmp_path, plan)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert isinstance(trainer.strategy._layer_sync, TorchSyncBatchNorm)  # BatchNorm -> SyncBatchNorm in each process
    auto = plan_devices(load_spec(None, overrides(ddp_root, tmp_path, "train.num_gpus=2")))
    assert auto.devices == 1 and "train.accelerator=cpu" in auto.note  # no GPU here: says how to get 2 processes


@pytest.mark.parametrize("task_overrides", [(), ("train.use_distributed_sampler=true",)])
def test_every_process_gets_its_own_part_of_each_split(ddp_root, tmp_path, task_overrides):
    cfg = load_spec(None, overrides(ddp_root, tmp_path, *task_overrides))
    seen = {"train": [], "val": []}
    for rank in (0, 1):
        module = ChangeDataModule(cfg)
        module.setup("fit")
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        train_sampler = module.train_dataloader().sampler
        if cfg.train.use_distributed_sampler:  # Lightning puts its own samplers in: ours stay out of the way
            assert not hasattr(train_sampler, "num_replicas")
            return
        train_sampler.set_epoch(3)
        seen["train"].append(list(train_sampler))
        seen["val"].append(list(module.val_dataloader().sampler))
    assert not set(seen["train"][0]) & set(seen["train"][1])
    assert sorted(seen["train"][0] + seen["train"][1]) == list(range(16))
    assert sorted(seen["val"][0] + seen["val"][1]) == list(range(6))  # each validation pair once: exact metrics


def test_classification_draw_is_split_between_processes(classify_spec_factory):
    from changenet.train.datamodule import ShardedSampler

    cfg = classify_spec_factory("dataset.classify.fpratio_sampling=0.5")
    draws = []
    for rank in (0, 1):
        module = ChangeDataModule(cfg)
        module.setup("fit")
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        sampler = module.train_dataloader().sampler
        sampler.set_epoch(1)
        draws.append(list(sampler))
    # Both processes make the one weighted draw of (seed, epoch) and deal it out: rank 0 the even places.
    whole = ShardedSampler(sampler.sampler, 1, 0, int(cfg.train.seed))
    whole.set_epoch(1)
    merged = [index for pair in zip(*draws) for index in pair]
    assert merged[: len(whole)] == list(whole)
    assert len(draws[0]) == len(draws[1]) == -(-len(whole) // 2)


# --------------------------------------------------------------------------- real DDP runs
def test_two_cpu_processes_train_with_one_writer_and_global_metrics(ddp_root, tmp_path):
    results = tmp_path / "results"
    done = run("train", *overrides(ddp_root, results, "train.accelerator=cpu", "train.num_gpus=2"))
    assert done.stdout.count("done: epoch 001/001") == 1  # one process speaks
    train_dir = results / "train"
    assert sorted(p.name for p in train_dir.iterdir()) == [
        "changenet_model_segment_latest.pth", "model_epoch_000.pth", "model_epoch_001.pth", "status.json"]
    records = status(results)
    assert [r["epoch"] for r in records] == [0, 1]
    # The validation figures (confusion matrix summed over both processes) equal one process's evaluation
    # of the same weights on the same split.
    evaluated = tmp_path / "evaluate"
    run("evaluate", *overrides(ddp_root, results, "dataset.segment.test_split=val",
                               f"evaluate.checkpoint={train_dir / 'changenet_model_segment_latest.pth'}",
                               f"evaluate.results_dir={evaluated}"))
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["num_pairs"] == 6
    assert records[-1]["val_miou"] == pytest.approx(metrics["miou"], abs=1e-6)
    assert records[-1]["val_acc"] == pytest.approx(metrics["acc"], abs=1e-6)


def test_ddp_run_killed_mid_epoch_resumes_under_ddp(ddp_root, tmp_path):
    results = tmp_path / "results"
    args = overrides(ddp_root, results, "train.accelerator=cpu", "train.num_gpus=2", "train.num_epochs=4",
                     "dataset.segment.batch_size=2")
    latest = results / "train" / "changenet_model_segment_latest.pth"
    process = subprocess.Popen([sys.executable, "-m", "changenet.cli", "train", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not latest.is_file():  # the first epoch is done and saved
            assert process.poll() is None and time.monotonic() < deadline, "the first epoch did not finish"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # both processes, in the second epoch
        process.wait()
    killed_at = len(status(results))
    assert killed_at < 4
    done = run("train", *args)
    assert "resuming from" in done.stdout
    assert [r["epoch"] for r in status(results)] == [0, 1, 2, 3]  # every epoch once


def test_two_nodes_over_loopback(ddp_root, tmp_path):
    results = tmp_path / "results"
    args = overrides(ddp_root, results, "train.accelerator=cpu", "train.num_gpus=1", "train.num_nodes=2")
    port = free_port()
    processes = []
    for node in (1, 0):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
               "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
        processes.append(subprocess.Popen([sys.executable, "-m", "changenet.cli", "train", *args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = {node: process.communicate(timeout=600) for node, process in zip((1, 0), processes)}
    assert all(p.returncode == 0 for p in processes), outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "done: epoch 001/001" in outputs[0][0] and "done:" not in outputs[1][0]  # node 1 writes nothing
    assert [r["epoch"] for r in status(results)] == [0, 1]


# --------------------------------------------------------------------------- TAO 7's checkpoint fields
def test_checkpoints_by_step_and_the_best_ones(ddp_root, tmp_path):
    by_step = tmp_path / "steps"
    run("train", *overrides(ddp_root, by_step, "train.checkpoint_interval_unit=step", "train.checkpoint_interval=3"))
    names = sorted(p.name for p in (by_step / "train").glob("model_*.pth"))
    assert names == ["model_epoch_000_step_00003.pth", "model_epoch_001_step_00006.pth"]  # 4 steps per epoch
    best = tmp_path / "best"
    run("train", *overrides(ddp_root, best, "train.checkpointer.enable_topk=true", "train.checkpointer.replace_periodic=true",
                            "train.checkpointer.monitor=val_loss", "train.checkpointer.save_top_k=1"))
    records = status(best)
    kept = sorted(p.name for p in (best / "train").glob("*.pth"))
    best_epoch = min(records, key=lambda r: r["val_loss"])["epoch"]
    assert kept == ["changenet_model_segment_latest.pth", f"model_best_{best_epoch:03d}.pth"]


def test_tensorboard_logs_when_asked(ddp_root, tmp_path):
    pytest.importorskip("tensorboardX", reason="TensorBoard logging needs tensorboard or tensorboardX (dev extra)")
    results = tmp_path / "results"
    run("train", *overrides(ddp_root, results, "train.tensorboard.enabled=true", "train.num_epochs=1"))
    assert list((results / "train" / "tensorboard").rglob("events.out.tfevents.*"))


def test_tensorboard_without_a_writer_package_is_one_line(ddp_root, tmp_path, monkeypatch):
    import importlib.util

    from changenet.train.trainer import tensorboard_logger

    cfg = load_spec(None, overrides(ddp_root, tmp_path, "train.tensorboard.enabled=true"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("tensorboard", "tensorboardX") else real(name, *a))
    with pytest.warns(UserWarning, match="pip install tensorboard"):
        assert tensorboard_logger(cfg, tmp_path) is False
