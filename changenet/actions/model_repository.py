"""`changenet model_repository`: a Triton model repository for an engine, an ONNX model or an OpenVINO IR
(changenet/deploy/triton.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from omegaconf import DictConfig

from changenet.config import is_set
from changenet.console import console
from changenet.deploy.triton import SOURCES, RepositoryOptions, write_repository
from changenet.errors import SpecError


def model_repository(cfg: DictConfig) -> Dict[str, object]:
    block = cfg.model_repository
    chosen = [key for key in SOURCES if is_set(cfg, f"model_repository.{key}")]
    if len(chosen) != 1:
        listed = ", ".join(f"model_repository.{key}" for key in SOURCES)
        raise SpecError(f"set exactly one model to serve: {listed}" + (f" (the spec sets {len(chosen)})" if chosen else ""))
    source = chosen[0]
    options = RepositoryOptions(
        source=source, model_path=Path(str(block[source])).expanduser(),
        path=Path(str(block.path or block.results_dir)).expanduser(), model_name=str(block.model_name),
        max_batch_size=None if block.max_batch_size is None else int(block.max_batch_size),
        instance_count=int(block.instance_count), max_queue_delay_ms=float(block.max_queue_delay_ms))
    summary = write_repository(options)
    console.print(f"Triton model repository for '{options.model_path}' ({summary['task']}, max_batch_size "
                  f"{summary['max_batch_size']}): {summary['model']}\nserve it with: {summary['command']}",
                  highlight=False, markup=False)
    return summary
