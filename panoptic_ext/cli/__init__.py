"""Command-line entry points, installed as console scripts (see ``pyproject.toml``) and also
reachable as ``python -m panoptic_ext.cli.<name>``. The repository's ``train_net.py``,
``demo/demo.py`` and ``tools/*.py`` are thin wrappers around the same ``main`` functions."""
