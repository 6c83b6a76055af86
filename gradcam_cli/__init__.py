"""gradcam-cli: batched Grad-CAM explanations for image classifiers, from the command line."""

import os

__version__ = "0.1.0"

# cuBLAS reads this once, at the first GEMM of the process: set here, on import, before any CUDA work, so
# `runtime.deterministic: true` (the default) gets reproducible GEMMs. A value the user set wins.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
