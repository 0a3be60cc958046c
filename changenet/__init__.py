"""changenet: bi-temporal change segmentation, from training to TensorRT deployment."""

__version__ = "0.1.0"
