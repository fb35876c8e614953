"""Reports from a results store: quality gaps, Pareto fronts, hypervolumes and axis effects."""

from fp4sweep.analysis.analyse import DEFAULT_TOLERANCE, Analysis, analyse
from fp4sweep.analysis.pareto import ReferencePoint
from fp4sweep.analysis.report import build_report, report_from_store

__all__ = [
    "DEFAULT_TOLERANCE",
    "Analysis",
    "ReferencePoint",
    "analyse",
    "build_report",
    "report_from_store",
]
