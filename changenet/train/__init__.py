"""Training: `changenet train` (runner), the LightningModule and DataModule, and the Trainer factory.
Checkpoints (reading, writing, naming) live in changenet.model.checkpoint, where every stage can use them."""
