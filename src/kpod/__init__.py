"""KPOD: keypoint-based progressive chain-of-thought distillation."""

__version__ = "0.1.0"
