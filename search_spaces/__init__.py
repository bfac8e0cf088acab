"""The built-in search spaces: one YAML file per study, shipped with the package as data.

``study.config.load_space("fusion")`` reads ``fusion.yaml`` from here; a path to a YAML file of
your own (``--space path/to/my.yaml``) is read from where it is.
"""
