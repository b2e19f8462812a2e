"""edh-plugin-demo: an example of components that plug into edh from another package.

Nothing is imported here: edh loads the modules its entry points name (``entry_points.txt`` in
the ``.dist-info`` folder beside this package, ``[project.entry-points."edh.heads"]`` in a real
``pyproject.toml``) the first time it looks up a head or a dataset:

- ``edh_plugin_demo.heads``: the ``multilabel`` head (sigmoid scores, BCE, per-label F1).
- ``edh_plugin_demo.data``: the ``digit-collage`` dataset (up to four real digits on a 2x2 grid,
  multi-hot targets).
"""

__version__ = "0.1"
