"""LightningModules: pure models (backbone, heads, losses, metrics). Data work lives in sslpath.data."""
