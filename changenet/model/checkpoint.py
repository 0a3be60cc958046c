"""Model checkpoints: TAO's layout, read from TAO or changenet, checked against the spec.

A checkpoint is laid out as TAO's trainer writes it, so either tool loads the other's files: a Lightning
checkpoint (`state_dict` with `model.backbone.*` / `model.decoder.*` (or `model.fc1.*`), optimizer,
scheduler, loop counters) with `tao_model: visual_changenet_segment` or `visual_changenet_classify`.
changenet adds a plain-typed "changenet" entry saying what model it holds; TAO ignores it.

    <train.results_dir>/model_epoch_000.pth ...          every train.checkpoint_interval epochs
    <train.results_dir>/changenet_model_<task>_latest.pth   after every epoch, replaced atomically

Reading goes through `changenet.model.weights.load_torch_file` (no code runs). A TAO checkpoint has no
metadata: the spec describes the model, and the tensors' shapes are checked against it, so a mismatch
is one line saying which spec keys to set. Writing is the Trainer's job (changenet.train.trainer;
`save_model_checkpoint` writes weights-only ones); this module needs no Lightning, so evaluation,
inference and export load models without it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import changenet
from changenet.errors import ModelError
from changenet.model.options import ModelOptions
from changenet.model.weights import find_state_dict, load_torch_file, refuse_encrypted
from changenet.task import task_named

LATEST_CHECKPOINT_NAME = "changenet_model_segment_latest.pth"  # task segment; see latest_checkpoint_name
METADATA_KEY = "changenet"
# Bumped when the checkpoint layout changes in a way readers must know about. Format 2: TAO's model
# and parameter names; format 1 (changenet 0.1) held a model of its own, which no longer loads.
CHECKPOINT_FORMAT = 2
# The LightningModule keeps the network as `self.model` (as TAO's does); its state_dict keys carry this prefix.
MODEL_PREFIX = "model."
TAO_MODEL_KEY = "tao_model"
TAO_SEGMENT_MODEL = "visual_changenet_segment"
TAO_CLASSIFY_MODEL = "visual_changenet_classify"
TAO_MODELS = {"segment": TAO_SEGMENT_MODEL, "classify": TAO_CLASSIFY_MODEL}

# Checkpoint saved after (0-based) epoch e, as str.format pattern without the ".pth" (Lightning's form).
EPOCH_CHECKPOINT_PATTERN = "model_epoch_{epoch:03d}"
STEP_CHECKPOINT_PATTERN = "model_epoch_{epoch:03d}_step_{step:05d}"  # train.checkpoint_interval_unit: step

# Backbones by what their tensors show, to name the backbone of a TAO checkpoint (several names when
# they differ only in settings that leave no trace in the weights, like the C-RADIO p1-p3 summary indices).
FAN_VARIANTS = {  # (token width, number of FAN blocks)
    (192, 8): ("fan_tiny_8_p4_hybrid",),
    (384, 10): ("fan_small_12_p4_hybrid",),
    (448, 16): ("fan_base_16_p4_hybrid",),
    (480, 22): ("fan_large_16_p4_hybrid",),
}
NVDINOV2_VARIANTS = {(1024, 24): ("vit_large_nvdinov2",)}  # (width, blocks)
RADIO_VARIANTS = {  # (width, blocks, MLP LayerNorm)
    (1280, 32, True): ("c_radio_p1_vit_huge_patch16_224_mlpnorm", "c_radio_p2_vit_huge_patch16_224_mlpnorm",
                       "c_radio_p3_vit_huge_patch16_224_mlpnorm"),
    (1280, 32, False): ("c_radio_v2_vit_huge_patch16_224",),
    (1024, 24, False): ("c_radio_v2_vit_large_patch16_224",),
    (768, 12, False): ("c_radio_v2_vit_base_patch16_224",),
}
RADIO_TRUNK = "backbone.radio.radio.radio.model."


def latest_checkpoint_name(task: str) -> str:
    """TAO's name of the checkpoint written after every epoch: changenet_model_<task>_latest.pth."""
    return f"changenet_model_{task}_latest.pth"


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint saved after (0-based) `epoch`: model_epoch_007.pth."""
    return EPOCH_CHECKPOINT_PATTERN.format(epoch=epoch) + ".pth"


# --------------------------------------------------------------------------- writing
def checkpoint_metadata(options: ModelOptions) -> Dict[str, Any]:
    """The "changenet" entry: what the checkpoint holds, in plain types (weights_only-loadable)."""
    layout = options.layout
    meta: Dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "changenet_version": changenet.__version__,
        "task": options.task.name,
        **spec_architecture(options),
        "input_size": list(layout.size),
        "mean": list(layout.mean),
        "std": list(layout.std),
        "model": dataclasses.asdict(options.model),
    }
    if not layout.task.dense:
        rows, columns = layout.grid
        meta.update(lights=list(layout.lights), concat_type=layout.concat_type,
                    grid_map={"x": columns, "y": rows} if layout.concat_type == "grid" else None)
        return meta
    meta.update(img_size=layout.height, class_names=list(layout.class_names),
                class_colors=[list(rgb) for rgb in layout.class_colors])
    return meta


def tao_fields(options: ModelOptions) -> Dict[str, Any]:
    """The top-level entries by which TAO recognises a Visual ChangeNet checkpoint: its task's tao_model and,
    for C-RADIO backbones, TAO's tao_model_type (segmentation: radio; classification: radio_learnable with
    the learnable head)."""
    fields = {TAO_MODEL_KEY: TAO_MODELS[options.task.name]}
    if "radio" in options.backbone:
        if options.task.dense:
            fields["tao_model_type"] = "radio"
        elif options.model.classify.difference_module == "learnable":
            fields["tao_model_type"] = "radio_learnable"
    return fields


def save_model_checkpoint(model: torch.nn.Module, options: ModelOptions, path: str | os.PathLike,
                          epoch: int = 0) -> Path:
    """Write `model`'s weights as a checkpoint that evaluate, inference, export and TAO load.

    For weights that did not come from `changenet train` (converted or hand-built models); it holds no
    optimiser state, so training does not resume from it. Written atomically.
    """
    import lightning

    from changenet.fileio import atomic_path

    state = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"epoch": int(epoch), "global_step": 0, "pytorch-lightning_version": lightning.__version__,
                    "state_dict": state, "optimizer_states": [], "lr_schedulers": [],
                    **tao_fields(options), METADATA_KEY: checkpoint_metadata(options)}, tmp)
    return path


# --------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    """A model checkpoint read from disk: its content and where it came from."""

    path: Path
    data: Dict[str, Any]
    metadata: Optional[Dict[str, Any]]  # changenet's entry; None for TAO's checkpoints

    @property
    def origin(self) -> str:
        return "changenet" if self.metadata is not None else "TAO"

    @property
    def model_state(self) -> Dict[str, torch.Tensor]:
        """The network's weights (LightningModule prefix removed)."""
        state = self.data["state_dict"]
        return {key[len(MODEL_PREFIX):]: value for key, value in state.items() if key.startswith(MODEL_PREFIX)}

    @property
    def epoch(self) -> int:
        return int(self.data.get("epoch", -1))

    @property
    def task(self) -> str:
        """segment or classify: from changenet's entry, TAO's tao_model, else the head's tensors."""
        if self.metadata is not None and self.metadata.get("task"):
            return str(self.metadata["task"])
        for task, name in TAO_MODELS.items():
            if self.data.get(TAO_MODEL_KEY) == name:
                return task
        state = self.model_state
        classifier = any(k.startswith(("decoder.classifier.", "fc1.")) for k in state)
        return "classify" if classifier else "segment"

    def architecture(self) -> Dict[str, Any]:
        """What the weights are: backbone, classes, decoder width, feat_downsample (metadata, else shapes)."""
        found = state_architecture(self.model_state)
        if self.metadata is not None:
            found.update({k: self.metadata[k] for k in ARCHITECTURE_KEYS if self.metadata.get(k) is not None})
        return found


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A TAO or changenet checkpoint (either task), loaded on the CPU without running code.

    ModelError (one line) for a missing or unreadable file, an encrypted checkpoint, one from
    changenet 0.1, or a file that holds no ChangeNet weights.
    """
    path = Path(path)
    data = load_torch_file(path, "checkpoint")
    refuse_encrypted(data, path)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        if isinstance(data, dict):
            find_state_dict(data, path)  # a plain state dict: say so below
        raise ModelError(
            f"'{path}' is not a model checkpoint (no 'state_dict' entry); a plain backbone state dict belongs in "
            "model.backbone.pretrained_backbone_path"
        )
    meta = data.get(METADATA_KEY)
    meta = meta if isinstance(meta, dict) else None
    if meta is not None and int(meta.get("format", 1)) < CHECKPOINT_FORMAT:
        raise ModelError(
            f"checkpoint '{path}' was written by changenet {meta.get('changenet_version', '0.1')}, whose model was not "
            "TAO's (other layers and names); its weights do not load into this version: train again"
        )
    checkpoint = Checkpoint(path, data, meta)
    if not any(key.startswith("backbone.") for key in checkpoint.model_state):
        raise ModelError(
            f"checkpoint '{path}' holds no ChangeNet weights (no 'model.backbone.*' tensors); a backbone-only file "
            "belongs in model.backbone.pretrained_backbone_path"
        )
    return checkpoint


# --------------------------------------------------------------------------- architecture checks
# What a checkpoint's weights show, and the spec key that decides each (classification keys are only
# compared for classification models).
SPEC_KEYS = {
    "backbone": "model.backbone.type",
    "num_classes": "dataset.segment.num_classes",
    "embed_dim": "model.decode_head.decoder_params.embed_dim",
    "feat_downsample": "model.backbone.feat_downsample",
    "summary": "model.decode_head.use_summary_token",
    "difference_module": "model.classify.difference_module",
    "embed_dec": "model.classify.embed_dec",
    "learnable_difference_modules": "model.classify.learnable_difference_modules",
    "embedding_vectors": "model.classify.embedding_vectors",
    "num_golden": "dataset.classify.num_golden",
}
ARCHITECTURE_KEYS = tuple(SPEC_KEYS)
CLASSIFY_SPEC_KEYS = {**SPEC_KEYS, "num_classes": "dataset.classify.num_classes"}


def spec_architecture(options: ModelOptions) -> Dict[str, Any]:
    """The architecture the spec builds, in the terms of SPEC_KEYS."""
    name, model = options.backbone, options.model
    found = {
        "backbone": name,
        "num_classes": options.layout.num_classes,
        "embed_dim": int(model.decode_head.decoder_params.embed_dim),
        "feat_downsample": bool(model.backbone.feat_downsample) and name.startswith("fan_"),
    }
    if name.startswith("c_radio"):  # the only backbones whose weights depend on use_summary_token
        found["summary"] = bool(model.decode_head.use_summary_token)
    if not options.task.dense:
        heads = model.classify
        found["difference_module"] = str(heads.difference_module)
        if heads.difference_module == "learnable":
            found.update(embed_dec=int(heads.embed_dec),
                         learnable_difference_modules=int(heads.learnable_difference_modules),
                         num_golden=min(options.layout.num_golden, 2))  # the weights tell 1 from more
        else:
            for key in ("num_classes", "embed_dim"):  # the euclidean head has neither
                found.pop(key)
            found["embedding_vectors"] = int(heads.embedding_vectors)
    return found


def state_architecture(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """What a ChangeNet state dict (no prefix) holds, read from tensor shapes; only what can be told."""
    found: Dict[str, Any] = {}
    final = state.get("decoder.change_probability.conv2d.weight")
    if final is not None:
        found["num_classes"] = int(final.shape[0])
    embed = state.get("decoder.linear_c4.proj.weight")
    if embed is not None:
        found["embed_dim"] = int(embed.shape[0])
    found.update(_classifier_head(state))

    def depth(prefix: str) -> int:
        return len({m.group(1) for key in state if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", key))})

    cls_token = state.get("backbone.cls_token")
    candidates = None
    if cls_token is not None and "backbone.patch_embed.backbone.stem.0.weight" in state:  # a FAN hybrid
        candidates = FAN_VARIANTS.get((int(cls_token.shape[-1]), depth("backbone.")))
        found["feat_downsample"] = "backbone.learnable_downsample.weight" in state
    elif cls_token is not None and "backbone.level_embed" in state:  # NV-DINOv2 ViT-Adapter
        candidates = NVDINOV2_VARIANTS.get((int(cls_token.shape[-1]), depth("backbone.")))
        found["feat_downsample"] = False
    elif RADIO_TRUNK + "patch_generator.embedder.weight" in state:  # C-RADIO ViT-Adapter
        width = int(state[RADIO_TRUNK + "patch_generator.embedder.weight"].shape[0])
        mlp_norm = RADIO_TRUNK + "blocks.0.mlp.norm.weight" in state
        candidates = RADIO_VARIANTS.get((width, depth(RADIO_TRUNK), mlp_norm))
        found["feat_downsample"] = False
        found["summary"] = "backbone.fc_summary.weight" in state
    if candidates is not None:
        found["backbone"] = candidates
    return found


def _classifier_head(state: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """What a classification head's tensors show (nothing for a segmentation model)."""
    if "fc1.6.weight" in state:
        return {"difference_module": "euclidean", "embedding_vectors": int(state["fc1.6.weight"].shape[0])}
    if "decoder.classifier.6.weight" not in state:
        return {}
    embed_dim = int(state["decoder.linear_c4.proj.weight"].shape[0])
    return {
        "difference_module": "learnable",
        "num_classes": int(state["decoder.classifier.6.weight"].shape[0]),
        "embed_dec": int(state["decoder.classifier.0.weight"].shape[0]),
        "learnable_difference_modules": int(state["decoder.linear_fuse.0.weight"].shape[1]) // embed_dim,
        "num_golden": 2 if "decoder.position_embedding_c1" in state else 1,
    }


def check_matches_spec(checkpoint: Checkpoint, options: ModelOptions) -> None:
    """ModelError when the checkpoint holds another task or architecture than the spec describes."""
    task = options.task
    if checkpoint.task != task.name:
        held = task_named(checkpoint.task)
        raise ModelError(f"{checkpoint.origin} checkpoint '{checkpoint.path}' is a {held.model_kind} model but the spec "
                         f"says task={task.name}; set task={held.name} (with its dataset block) or choose another "
                         "checkpoint")
    wanted = spec_architecture(options)
    found = checkpoint.architecture()
    keys = SPEC_KEYS if task.dense else CLASSIFY_SPEC_KEYS

    def fits(key: str) -> bool:
        held = found[key]
        return wanted[key] in held if isinstance(held, (tuple, list)) and key == "backbone" else held == wanted[key]

    differing = [key for key in ARCHITECTURE_KEYS if key in found and key in wanted and not fits(key)]
    if differing:
        held = ", ".join(f"{key} {_describe(key, found[key])}" for key in differing)
        spec = ", ".join(f"{keys[key]}={_describe(key, wanted[key])}" for key in differing)
        fix = " ".join(f"{keys[key]}={_yaml(found[key])}" for key in differing if key != "num_golden")
        fix += " dataset.classify.num_golden=<2 or more>" if "num_golden" in differing and found["num_golden"] > 1 else ""
        raise ModelError(
            f"{checkpoint.origin} checkpoint '{checkpoint.path}' holds a model with {held}, but the spec says {spec}; "
            f"set {fix.strip()} or choose a checkpoint trained for this spec"
        )


def _describe(key: str, value: Any) -> str:
    if key == "num_golden":
        return "several" if value > 1 else "1"
    return _yaml(value)


def _yaml(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return value[0] if len(value) == 1 else f"one of {', '.join(value)}"
    return str(value).lower() if isinstance(value, bool) else str(value)


INPUT_SIZE_TENSORS = ("decoder.classifier.0.weight", "fc1.0.weight")


def load_strict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """load_state_dict(strict=True) with a one-sentence error naming the file and the first odd tensor."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        detail = "; ".join(
            f"{label} {len(keys)} tensors (e.g. {keys[0]})"
            for label, keys in (("lacks", missing), ("has extra", unexpected)) if keys
        )
        raise ModelError(f"weights in '{path}' do not fit the model the spec builds: the file {detail}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[name].shape):
            hint = ""
            if name in INPUT_SIZE_TENSORS:  # the first layer of a classification head fixes the input size
                hint = ("; the classifier was trained for another input size: check dataset.classify.image_height/"
                        "image_width, input_map and concat_type")
            raise ModelError(
                f"weights in '{path}' do not fit the model the spec builds: '{name}' has shape {list(tensor.shape)} "
                f"in the file and {list(own[name].shape)} in the model{hint}"
            )
    model.load_state_dict(state, strict=True)


def load_model_from_checkpoint(path: str | os.PathLike, options: ModelOptions) -> torch.nn.Module:
    """The trained model of a TAO or changenet checkpoint (ChangeNet or ChangeNetClassifier), in eval mode
    on the CPU. The spec must describe the same task and architecture (backbone, classes, widths, heads).
    """
    from changenet.model import build_model

    checkpoint = read_checkpoint(path)
    check_matches_spec(checkpoint, options)
    # The trained weights replace any initialisation, so no pretrained weights are read.
    model = build_model(options, load_pretrained=False)
    load_strict(model, checkpoint.model_state, path)
    return model.eval()


def completed_epochs(checkpoint: Checkpoint) -> int:
    """How many epochs a checkpoint saved at the end of an epoch has finished (its "epoch" is 0-based)."""
    return checkpoint.epoch + 1


# --------------------------------------------------------------------------- resuming a TAO checkpoint
def optimizer_fit(checkpoint: Checkpoint, model: torch.nn.Module, optim: str) -> Optional[str]:
    """Why the checkpoint's training state cannot continue in `model` with optimizer `optim`; None when it can.

    Lightning restores optimizer states by parameter position; ours are registered in TAO's order, so a
    TAO state fits when it covers the same tensors with the same shapes and the same kind of optimizer.
    """
    states: List[Dict[str, Any]] = checkpoint.data.get("optimizer_states") or []
    if not states:
        return "it holds no optimizer state"
    if "loops" not in checkpoint.data:
        return "it holds no training loop state"
    params = list(model.parameters())
    groups = states[0].get("param_groups", [])
    count = sum(len(group.get("params", [])) for group in groups)
    if count != len(params):
        return f"its optimizer covers {count} tensors but this model has {len(params)}"
    per_param: Dict[int, Dict[str, Any]] = states[0].get("state", {})
    kinds = {"exp_avg": ("adamw", "adam"), "momentum_buffer": ("sgd",)}
    for index, state in per_param.items():
        for buffer, optimizers in kinds.items():
            if buffer in state and optim not in optimizers:
                return f"its optimizer is {'/'.join(optimizers)} but train.optim.optim is {optim}"
            if buffer in state and tuple(state[buffer].shape) != tuple(params[int(index)].shape):
                return f"its optimizer state of parameter {index} has another shape than this model's"
    return None

