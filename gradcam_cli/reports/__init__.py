"""Reading finished runs for people and CI: the gallery (index.html), `gradcam compare` and its formats."""
