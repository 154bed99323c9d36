"""What every notebook sets up: its folders, where its figures and tables go, and showing a
figure inline. Not a notebook itself (``run.py`` skips names starting with ``_``)."""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SCENARIOS = HERE.parent / "scenarios"
OUT = Path(os.environ.get("TWINRX_NOTEBOOK_OUT", HERE / "_output"))
OUT.mkdir(parents=True, exist_ok=True)


def show(fig) -> None:
    """Show a figure inline under Jupyter (twinrx.plots builds figures without pyplot); a
    no-op when the notebook runs as a script. Every figure is also saved under OUT."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return
    if get_ipython() is not None:
        display(fig)
