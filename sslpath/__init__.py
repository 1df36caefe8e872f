"""sslpath: SimCLR, supervised and fine-tuning experiments on PathMNIST."""

from sslpath.config import register_resolvers  # import-light: keeps `--help` fast

register_resolvers()
