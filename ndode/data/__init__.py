"""Data sets for the paper's experiments, one module each (``ndode.data.mnist``, ...)."""
