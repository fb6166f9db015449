"""One config file per experiment, each exporting get_config(arg=None)."""
