"""The only place that touches autograd: hooks, forward, gradients, CAM weighting and normalisation."""

from gradcam_cli.engine.base import CamBatch, CamEngine, TargetSpec
from gradcam_cli.engine.methods import METHODS, CamMethod

__all__ = ["METHODS", "CamBatch", "CamEngine", "CamMethod", "TargetSpec"]
