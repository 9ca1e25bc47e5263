"""The embedded default: a procedural toy world, tiny models trained on it, and the demo study."""
