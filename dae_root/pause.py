"""Named pause points where tests interrupt `dae` deterministically (kills, Ctrl-C); inert unless a test arms one.

A test sets DAE_PAUSE_DIR to a folder and creates NAME.hold in it; the code reaching `pause_point(NAME)` then
creates NAME.reached and waits while NAME.hold exists. The test waits for the file the code wrote, not for a
time, so "killed right after the first committed batch" means exactly that on a loaded machine too.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "DAE_PAUSE_DIR"


def pause_point(name: str) -> None:
    folder = os.environ.get(ENV)
    if not folder:
        return
    hold = Path(folder) / f"{name}.hold"
    if not hold.exists():
        return
    (Path(folder) / f"{name}.reached").touch()
    while hold.exists():
        time.sleep(0.01)
