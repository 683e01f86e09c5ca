"""Tables and figures: pure functions of the collector's DataFrame (or of arrays saved in a run record).

Nothing here imports training code; ``scripts/make_tables.py`` and
``scripts/make_figures.py`` are thin command-line wrappers around it.
"""

from .tables import TABLES, TableSpec, markdown_table, seed_table

__all__ = ["TABLES", "TableSpec", "seed_table", "markdown_table"]
