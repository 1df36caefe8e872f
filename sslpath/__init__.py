"""sslpath: SimCLR, supervised and fine-tuning experiments on PathMNIST."""

from sslpath.core.environment import keep_local
from sslpath.core.resolvers import register_resolvers  # import-light: keeps `--help` fast

keep_local()  # before any library that phones home or writes into $HOME is imported
register_resolvers()
