"""One run, top to bottom: options and summary, preparation, what is still to do, decoding, rendering,
the local and Ray backends, resume, shards and the folder lock. Start at run.py.

Kept empty on purpose: `gradcam run --dry-run` imports runner modules that must not import torch.
"""
