"""Cell folders and grids, shared by both applications.

    files.py   writing a cell folder: every file atomically, one writer at a time
    folder.py  reading a cell folder (status, report, resume and the grid all use it)
    grid.py    params file -> cells -> one papermill run of a notebook per cell
    report.py  the grid's table and HTML report (reads cell folders only)
    discovery_report.py  the same for an object-discovery grid: FG-ARI, its curve, the mask readouts
"""
