"""sslpath: SimCLR, supervised and fine-tuning experiments on PathMNIST."""

from sslpath.core.resolvers import register_resolvers  # import-light: keeps `--help` fast

register_resolvers()
