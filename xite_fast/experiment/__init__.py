"""The reproducible experiment driver behind ``xite-fast experiment``."""
