"""Tests of the bench scripts. bench/ is a folder of scripts that import each other by module name, so it goes
on sys.path here, as it is when a script runs."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
