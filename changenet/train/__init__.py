"""Training: `changenet train` (runner), the LightningModule and DataModule, the Trainer factory and
checkpoints.

Only the checkpoint API is imported here; it needs no Lightning, so tools that merely load a trained
model (evaluate, inference, export) stay light. `from changenet.train.runner import train` runs training.
"""

from changenet.train.checkpoint import (
    LATEST_CHECKPOINT_NAME,
    epoch_checkpoint_name,
    load_model_from_checkpoint,
    read_checkpoint,
)

__all__ = ["LATEST_CHECKPOINT_NAME", "epoch_checkpoint_name", "load_model_from_checkpoint", "read_checkpoint"]
