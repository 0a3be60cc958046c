"""The tensor names of an exported model: TAO's export contract for each task.

    segment:  input0, input1 [B, 3, H, W]          -> output0..output3, output_final (logits, decoder order)
    classify: input_1 [B, 3, H, W], input_2 [B, 3, H, W] or [B, N, 3, H, W] (N golden images)
              -> output: logits [B, K] (learnable difference modules) or a distance [B] (euclidean)

Every stage that touches a model file (export, verification, calibration, engines, runtimes) reads the
names from here, and recognises a file made elsewhere (TAO, trtexec) by its input names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Tuple

from changenet.errors import ModelError


@dataclass(frozen=True)
class ModelIO:
    task: str
    inputs: Tuple[str, str]  # (test / "A" image, golden / "B" image)
    outputs: Tuple[str, ...]  # the last one is the prediction
    golden_stack: bool = False  # the second input may hold several golden images: [B, N, 3, H, W]

    @property
    def prediction(self) -> str:
        return self.outputs[-1]


SEGMENT_IO = ModelIO("segment", ("input0", "input1"), ("output0", "output1", "output2", "output3", "output_final"))
CLASSIFY_IO = ModelIO("classify", ("input_1", "input_2"), ("output",), golden_stack=True)
CONTRACTS = {io.task: io for io in (SEGMENT_IO, CLASSIFY_IO)}


def io_for_task(task: str) -> ModelIO:
    return CONTRACTS[str(task)]


def io_from_names(input_names: Iterable[str], where: str) -> ModelIO:
    """The contract whose inputs a model file has; one line naming the file when it has neither."""
    names = set(input_names)
    for io in CONTRACTS.values():
        if set(io.inputs) <= names:
            return io
    expected = " or ".join(f"({', '.join(io.inputs)})" for io in CONTRACTS.values())
    raise ModelError(f"'{where}' is not a changenet model: its inputs are {', '.join(sorted(names)) or 'none'}, "
                     f"expected {expected}")
