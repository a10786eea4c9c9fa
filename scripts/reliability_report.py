"""Sum up the fault-injection runs recorded by ``make reliability``.

Reads the JSON lines the tests append (see tests/reliability.py) and prints one
row per fault and operation: runs, runs that finished, duplicate VMs, orphaned
VMs and missing VMs found afterwards.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> int:
    rows: dict[tuple[str, str], dict[str, int]] = defaultdict(
        lambda: {
            "runs": 0,
            "injected": 0,
            "finished": 0,
            "duplicates": 0,
            "orphans": 0,
            "missing": 0,
            "points": 0,
        }
    )
    points: dict[tuple[str, str], set[str]] = defaultdict(set)
    for line in Path(path).read_text().splitlines():
        run = json.loads(line)
        key = (run["fault"], run["operation"])
        row = rows[key]
        row["runs"] += 1
        row["finished"] += bool(run["finished"])
        row["injected"] += int(run.get("injected", 1))
        for field in ("duplicates", "orphans", "missing"):
            row[field] += len(run[field])
        points[key].add(run["point"])
    header = f"{'fault':<18} {'operation':<11} {'points':>6} {'runs':>5} {'faults':>6} {'finished':>8} "
    header += f"{'duplicates':>10} {'orphans':>7} {'missing':>7}"
    print(header)
    print("-" * len(header))
    totals: dict[str, int] = defaultdict(int)
    for (fault, operation), row in sorted(rows.items()):
        row["points"] = len(points[(fault, operation)])
        print(
            f"{fault:<18} {operation:<11} {row['points']:>6} {row['runs']:>5} {row['injected']:>6} "
            f"{row['finished']:>8} "
            f"{row['duplicates']:>10} {row['orphans']:>7} {row['missing']:>7}"
        )
        for name, value in row.items():
            totals[name] += value
    print("-" * len(header))
    print(
        f"{'all':<30} {totals['points']:>6} {totals['runs']:>5} {totals['injected']:>6} "
        f"{totals['finished']:>8} "
        f"{totals['duplicates']:>10} {totals['orphans']:>7} {totals['missing']:>7}"
    )
    bad = totals["runs"] - totals["finished"] + totals["duplicates"] + totals["orphans"] + totals["missing"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".state/reliability.jsonl"))
