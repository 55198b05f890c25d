"""Regenerate sheets/experiments.xlsx, the example workbook `nero init` copies.

Run from anywhere: `python sheets/regenerate.py`. The content lives in
`orchestrator.sheet.write_example_workbook`; tests check this copy is current.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from orchestrator.sheet import read_workbook, write_example_workbook  # noqa: E402

if __name__ == "__main__":
    path = write_example_workbook(HERE / "experiments.xlsx")
    workbook = read_workbook(path)  # the example must read back without a problem
    print(f"wrote {path}: {len(workbook.experiments)} experiments, {len(workbook.clusters)} cluster(s)")
