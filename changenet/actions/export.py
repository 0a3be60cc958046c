"""`changenet export`: the spec's checkpoint -> ONNX with TAO's tensor names, verified against PyTorch, and
its sidecar (deploy.export.export_onnx does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch
from omegaconf import DictConfig

from changenet.console import status_console
from changenet.deploy.export import check_model_input_size, export_onnx, print_export_table, step
from changenet.deploy.sidecar import ModelContract
from changenet.deploy.verify import sample_pairs
from changenet.errors import SpecError
from changenet.fileio import sha256_file


def export(cfg: DictConfig) -> Dict[str, object]:
    """`changenet export -e spec.yaml export.checkpoint=... export.onnx_file=...`"""
    from changenet.config import require, require_path
    from changenet.data import class_names, class_palette
    from changenet.deploy.torch_predictor import pick_device
    from changenet.model import build_model
    from changenet.model.checkpoint import load_model_from_checkpoint
    from changenet.task import (
        input_size,
        is_classify,
        lighting_conditions,
        normalisation,
        num_classes,
        num_golden,
        size_keys,
    )

    spec = cfg.export
    if spec.input_channel != 3:
        raise SpecError(
            f"spec key 'export.input_channel' is {spec.input_channel} but ChangeNet takes RGB image pairs; "
            "set export.input_channel=3"
        )
    checkpoint = require_path(cfg, "export.checkpoint", "export")
    onnx_path = Path(str(require(cfg, "export.onnx_file", "export"))).expanduser()
    data_height, data_width = input_size(cfg)
    height = int(spec.input_height if spec.input_height is not None else data_height)
    width = int(spec.input_width if spec.input_width is not None else data_width)
    if is_classify(cfg) and (height, width) != (data_height, data_width):
        raise SpecError(f"export.input_height/input_width are {height}x{width} but the classifier's head is sized for "
                        f"the data's {data_height}x{data_width} ({size_keys(cfg)}); leave them unset or set "
                        f"export.input_height={data_height} export.input_width={data_width}")
    device = pick_device(spec.gpu_id, spec.on_cpu)
    # A shapes-only model on the meta device checks the input size before the (slow) checkpoint load.
    with torch.device("meta"):
        check_model_input_size(build_model(cfg, load_pretrained=False), height, width, str(cfg.model.backbone.type))

    console = status_console
    with step(console, f"Loading checkpoint '{checkpoint}' (export on {device})"):
        model = load_model_from_checkpoint(checkpoint, cfg)
        checkpoint_sha256 = sha256_file(checkpoint)
    with step(console, "Preparing verification inputs"):
        pairs = sample_pairs(cfg, 2 if spec.batch_size == -1 else spec.batch_size, height, width)
    mean, std = normalisation(cfg)
    facts = ModelContract.of(task=str(cfg.task), num_classes=num_classes(cfg), backbone=str(cfg.model.backbone.type),
                             mean=mean, std=std, checkpoint=str(checkpoint), checkpoint_sha256=checkpoint_sha256)
    if is_classify(cfg):
        facts = facts.updated(difference_module=str(cfg.model.classify.difference_module), num_golden=num_golden(cfg),
                              lights=lighting_conditions(cfg), eval_margin=float(cfg.model.classify.eval_margin))
    else:
        facts = facts.updated(class_names=class_names(cfg), align_corners=bool(cfg.model.decode_head.align_corners),
                              color_map={str(i): [int(c) for c in rgb] for i, rgb in enumerate(class_palette(cfg))})
    result = export_onnx(
        model, onnx_path, height, width, spec.batch_size, spec.opset_version, device=device, pairs=pairs,
        sidecar=facts, verbose=spec.verbose, console=console, split_transposed_conv=spec.split_transposed_conv,
        deformable_attention=str(spec.deformable_attention),
    )
    print_export_table(result, console)
    return result.sidecar.to_dict()
