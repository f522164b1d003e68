"""The design document (docs/DESIGN.md), rendered from the spec, the run parameters and the
measured reports. Pure text: it imports the spec and nothing of the stages or of Kedro."""

from mlsd.design.measured import BEGIN, END, NOT_MEASURED, REPORTS, Measured
from mlsd.design.render import missing_design, render_design

__all__ = ["BEGIN", "END", "NOT_MEASURED", "REPORTS", "Measured", "missing_design", "render_design"]
