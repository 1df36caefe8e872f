"""sslpath: SimCLR, supervised and fine-tuning experiments on PathMNIST."""

from sslpath.config import register_resolvers  # import-light: keeps `--help` fast
from sslpath.console import quiet_loggers

register_resolvers()
quiet_loggers()
