"""sslpath: SimCLR, supervised and fine-tuning experiments on PathMNIST."""

from sslpath.config import register_resolvers

register_resolvers()
