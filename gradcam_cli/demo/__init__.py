"""Self-contained demos: a procedural shapes dataset and the small CNN trained on it (shipped weights);
the ImageNet demo's EfficientNet-Lite0 factory and class names (weights from the extra `gradcam-cli[demo]`)."""
