"""The data layer: reading, downloading and generating tiles, and serving them as ready batches.

Kept import-light (no torch at package import) so `--help` answers fast; import the submodules.
"""
