"""Self-contained demo: a procedural shapes dataset and the small CNN trained on it."""
