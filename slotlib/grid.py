"""Notebook execution through papermill (the grid runner builds on this).

The kernel must be this environment's Python, not whatever ``python3`` kernel a machine has:
``JUPYTER_PATH`` is pointed at this environment's kernelspecs first (Jupyter searches it before
the user's and the system's folders), and jupyter_client runs a spec whose command is plain
``python`` with the current interpreter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def kernel_env() -> dict[str, str]:
    """Environment variables that make papermill start this environment's kernel."""
    own = str(Path(sys.prefix) / "share" / "jupyter")
    rest = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != own]
    return {"JUPYTER_PATH": os.pathsep.join([own, *rest])}


def execute_notebook(notebook: str | os.PathLike, output: str | os.PathLike, parameters: dict[str, Any], *,
                     cwd: str | os.PathLike | None = None, log_output: bool = False,
                     start_timeout: int = 120) -> Any:
    """Run ``notebook`` with papermill, injecting ``parameters``; the executed copy goes to ``output``."""
    import papermill as pm

    os.environ.update(kernel_env())
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    return pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name="python3",
                               cwd=str(cwd or Path(notebook).parent), log_output=log_output, progress_bar=False,
                               start_timeout=start_timeout)
