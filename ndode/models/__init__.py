"""Models for the paper's experiments, one module each (``ndode.models.mnist``, ...)."""
