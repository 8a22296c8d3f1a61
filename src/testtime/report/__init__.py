"""Reports of a results store: tables in the paper's shape, plots, and the paper's feature analyses.

``tables`` and ``build`` need only the standard library and numpy; ``plots`` and ``analysis`` need the
``report`` extra (matplotlib, scikit-learn).
"""

from testtime.report.build import load_run, write_report
from testtime.report.tables import Table, build_tables, to_csv, to_latex, to_markdown

__all__ = ["Table", "build_tables", "load_run", "to_csv", "to_latex", "to_markdown", "write_report"]
