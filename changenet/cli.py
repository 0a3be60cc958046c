"""The `changenet` command line: TAO-style actions `changenet <action> -e spec.yaml [key.sub=value ...]`."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from changenet.config.help import action_help
from changenet.errors import ChangenetError

app = typer.Typer(
    help="Bi-temporal change segmentation: train, evaluate, export, calibrate and deploy on TensorRT.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
)
dataset_app = typer.Typer(help="Dataset tools.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(dataset_app, name="dataset")

# action -> "module:function"; each function takes the loaded spec (DictConfig).
ACTION_ENTRY_POINTS = {
    "train": "changenet.train.runner:train",
    "evaluate": "changenet.evaluation.runner:evaluate",
    "inference": "changenet.evaluation.runner:inference",
    "export": "changenet.deploy.export:export",
    "calibrate": "changenet.calib.calibrate:calibrate",
    "gen_trt_engine": "changenet.deploy.engine_builder:gen_trt_engine",
    "benchmark": "changenet.benchmark:benchmark",
}

ACTION_SUMMARIES = {
    "train": "Train a change segmentation model (Lightning); resumes automatically.",
    "evaluate": "Metrics (OA, mIoU, mF1, per class) of a checkpoint, ONNX model or TensorRT engine.",
    "inference": "Change masks and visualisations for the predict split.",
    "export": "Export a checkpoint to ONNX, verified against PyTorch.",
    "calibrate": "INT8 calibration over image pairs: Q/DQ ONNX and TensorRT cache.",
    "gen_trt_engine": "Build a FP32/FP16/INT8 TensorRT engine from an ONNX model.",
    "benchmark": "Measure throughput and latency of the chosen backends.",
}


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load_entry_point(action: str) -> Callable:
    module_name, func_name = ACTION_ENTRY_POINTS[action].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            _fail(f"`changenet {action}` is not built yet")
        raise
    return getattr(module, func_name)


def run_action(action: str, spec: Optional[Path], overrides: List[str]) -> None:
    """Load the spec for an action and run it; user errors become one line and exit code 2."""
    from changenet.config import load_spec
    from changenet.config.tao_compat import note_settings_without_effect
    from changenet.console import show_log_lines

    show_log_lines()
    try:
        cfg = load_spec(spec, overrides, action=action)
        note_settings_without_effect(cfg, action)
        _load_entry_point(action)(cfg)
    except ChangenetError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


def _make_action_command(action: str) -> None:
    def command(
        ctx: typer.Context,
        experiment_spec_file: Optional[Path] = typer.Option(
            None, "-e", "--experiment_spec_file", "--experiment_spec", help="YAML experiment spec."
        ),
    ) -> None:
        run_action(action, experiment_spec_file, list(ctx.args))

    command.__doc__ = ACTION_SUMMARIES[action]
    app.command(
        name=action,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog="\b\n" + action_help(action).replace("\n\n", "\n"),
    )(command)


for _action in ACTION_ENTRY_POINTS:
    _make_action_command(_action)


@dataset_app.command("synth")
def dataset_synth(
    out: Path = typer.Option(..., "--out", help="Output dataset root (A/, B/, label/, list/)."),
    num_train: int = typer.Option(64, "--num-train", min=0),
    num_val: int = typer.Option(16, "--num-val", min=0),
    num_test: int = typer.Option(16, "--num-test", min=0),
    num_predict: int = typer.Option(8, "--num-predict", min=0),
    img_size: int = typer.Option(256, "--img-size", min=32),
    num_classes: int = typer.Option(2, "--num-classes", min=2, max=4),
    seed: int = typer.Option(0, "--seed"),
    scene: Optional[int] = typer.Option(None, "--scene", help="Also write one large scene pair of this size."),
) -> None:
    """Generate a deterministic synthetic change dataset in the LEVIR-CD layout."""
    from changenet.data.synth import generate_dataset

    try:
        generate_dataset(
            out, num_train=num_train, num_val=num_val, num_test=num_test, num_predict=num_predict,
            img_size=img_size, num_classes=num_classes, seed=seed, scene_size=scene,
        )
    except ChangenetError as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
