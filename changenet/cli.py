"""The `changenet` command line: TAO-style actions `changenet <action> -e spec.yaml [key.sub=value ...]`."""

from __future__ import annotations

import contextlib
import faulthandler
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer

from changenet.actions import ACTIONS
from changenet.config.help import action_help
from changenet.errors import ChangenetError

app = typer.Typer(
    help="Bi-temporal change detection (segment: change masks; classify: defect / no defect): train, evaluate, "
         "export, calibrate and deploy on TensorRT.",
    no_args_is_help=True,
    rich_markup_mode=None,
    add_completion=False,
)
dataset_app = typer.Typer(help="Dataset tools.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(dataset_app, name="dataset")

DEBUG_VARIABLE = "CHANGENET_DEBUG"
BUG_EXIT_CODE = 1


_debug_option = False  # `changenet --debug ...` of the current invocation


@app.callback()
def main_options(
    debug: bool = typer.Option(False, "--debug", help=f"Print the traceback of any error (also {DEBUG_VARIABLE}=1)."),
) -> None:
    global _debug_option
    _debug_option = debug


def debugging() -> bool:
    return _debug_option or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")

def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _enable_faulthandler() -> None:
    """A crash in native code (a segfault in a runtime) still leaves the Python stack on the process's stderr."""
    if not faulthandler.is_enabled() and sys.__stderr__ is not None:
        try:
            faulthandler.enable(file=sys.__stderr__)
        except (ValueError, OSError, AttributeError):  # no file descriptor behind it (embedded interpreters)
            pass


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """User mistakes (ChangenetError) become one line and their exit code (the traceback too with --debug);
    any other exception is a bug: its traceback is the report, so it is always printed, with exit code 1."""
    _enable_faulthandler()
    try:
        yield
    except ChangenetError as exc:
        if debugging():
            traceback.print_exc()
        _fail(str(exc), getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        _fail("interrupted", code=130)
    except (typer.Exit, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - everything else is ours to fix, but for the machine's own failures
        machine_failure = _machine_failure(exc)
        if machine_failure:
            if debugging():
                traceback.print_exc()
            _fail(machine_failure, BUG_EXIT_CODE)
        traceback.print_exc()
        _fail("the traceback above is a bug in changenet, not a mistake in your spec or data; please report it "
              "with the command line you ran", BUG_EXIT_CODE)


def _machine_failure(exc: Exception) -> Optional[str]:
    """One line for what the machine did to the run (memory ran out, a worker process was killed from
    outside), which is neither a spec mistake nor a bug; None for anything else."""
    if isinstance(exc, MemoryError):
        return ("out of memory; lower the batch size (or dataset.<task>.workers), or free memory, and rerun "
                "(training resumes from its latest checkpoint)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, RuntimeError) and "DataLoader worker" in first and "killed by signal" in first:
        return (f"{first.rstrip('. ')}: a data-loading process was stopped from outside (often the kernel's "
                "out-of-memory killer); lower dataset.<task>.workers or the batch size and rerun (training resumes "
                "from its latest checkpoint)")
    return None


def _load_entry_point(action: str) -> Callable:
    module_name, func_name = ACTIONS[action][0].split(":")
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
    with reported_errors():
        cfg = load_spec(spec, overrides, action=action)
        note_settings_without_effect(cfg, action)
        _load_entry_point(action)(cfg)


def _make_action_command(action: str) -> None:
    def command(
        ctx: typer.Context,
        experiment_spec_file: Optional[Path] = typer.Option(
            None, "-e", "--experiment_spec_file", "--experiment_spec", help="YAML experiment spec."
        ),
    ) -> None:
        run_action(action, experiment_spec_file, list(ctx.args))

    command.__doc__ = ACTIONS[action][1]
    app.command(
        name=action,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog="\b\n" + action_help(action).replace("\n\n", "\n"),
    )(command)


for _action in ACTIONS:
    _make_action_command(_action)


@app.command("spec")
def spec(
    action: str = typer.Argument(..., help="The action whose spec to print: " + ", ".join(ACTIONS) + "."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of YAML."),
    schema: bool = typer.Option(False, "--schema", help="The JSON Schema: types, defaults, choices, ranges, help."),
) -> None:
    """Print the default spec of an action (YAML; values you must give read ???), or its JSON Schema."""
    import json

    from changenet.config.spec_schema import default_spec, default_spec_yaml, json_schema

    with reported_errors():
        if schema:
            typer.echo(json.dumps(json_schema(action), indent=2))
        elif as_json:
            typer.echo(json.dumps(default_spec(action), indent=2))
        else:
            typer.echo(default_spec_yaml(action), nl=False)


@app.command("inspect")
def inspect(
    file: Path = typer.Argument(..., help="A checkpoint, ONNX model, TensorRT engine or OpenVINO .xml."),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of a table."),
) -> None:
    """What a model file is (task, backbone, classes, input size, tensors, batch, precision, TensorRT build)
    and whether this machine can run it."""
    import json

    from changenet.deploy.inspection import inspect_model_file

    with reported_errors():
        report = inspect_model_file(file)
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            from changenet.actions.inspect import print_report

            print_report(report)


@dataset_app.command("synth")
def dataset_synth(
    out: Path = typer.Option(..., "--out", help="Output dataset root."),
    task: str = typer.Option("segment", "--task", help="segment (LEVIR-CD layout) or classify (TAO's inspection CSVs)."),
    num_train: Optional[int] = typer.Option(None, "--num-train", min=0, help="[default: 64 pairs / 160 objects]"),
    num_val: Optional[int] = typer.Option(None, "--num-val", min=0, help="[default: 16 / 48]"),
    num_test: Optional[int] = typer.Option(None, "--num-test", min=0, help="[default: 16 / 48]"),
    num_predict: Optional[int] = typer.Option(None, "--num-predict", min=0, help="[default: 8 / 16] (classify: infer.csv)"),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=32, help="[default: 256 / 64 per lighting condition]"),
    num_classes: int = typer.Option(2, "--num-classes", min=2, max=4, help="segment: change classes."),
    lights: int = typer.Option(4, "--lights", min=1, max=4, help="classify: lighting conditions per object."),
    num_golden: int = typer.Option(1, "--num-golden", min=1, help="classify: golden images per object."),
    image_ext: str = typer.Option(".png", "--image-ext", help="classify: .png or .jpg image files."),
    seed: int = typer.Option(0, "--seed"),
    scene: Optional[int] = typer.Option(None, "--scene", help="segment: also write one large scene pair of this size."),
    bit_depth: int = typer.Option(8, "--bit-depth", help="segment: 8 (PNG) or 16 (GeoTIFF chips)."),
    bands: int = typer.Option(3, "--bands", help="segment: 3 (RGB) or 4 (RGB + NIR, GeoTIFF chips)."),
    broken: bool = typer.Option(False, "--broken", help="segment: add near-equal and broken pairs, as real archives have."),
) -> None:
    """Generate a deterministic synthetic dataset: change pairs (segment) or inspected parts (classify)."""
    from changenet.actions.dataset import synth

    with reported_errors():
        synth(out, task, num_train=num_train, num_val=num_val, num_test=num_test, num_predict=num_predict,
              img_size=img_size, num_classes=num_classes, lights=lights, num_golden=num_golden, image_ext=image_ext,
              seed=seed, scene=scene, bit_depth=bit_depth, bands=bands, broken=broken)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
