"""The catalog's data (task class names, templates, backgrounds; caption pools), shipped inside the
wheel as the package ``synthimg.data_manifests`` (see ``pyproject.toml``'s package-dir mapping)."""
