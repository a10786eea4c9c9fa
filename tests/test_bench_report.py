"""``make bench``'s report prints the scale issue's budgets next to the figures
they bound, at the sizes they bound (sim/bench.py)."""

from __future__ import annotations

from sim import bench


def figures(workers: int, **values: object) -> bench.Figures:
    base = bench.Figures(masters=3, workers=workers, vcenter_task_cap=256)
    for key, value in values.items():
        setattr(base, key, value)
    return base


def row(table: str, label: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_the_delete_budget_is_one_and_a_half_vm_teardowns_per_round_of_the_cap() -> None:
    # 1003 VMs at a cap of 256: 4 rounds of a 1 s power-off and a 1 s destroy.
    assert bench.delete_budget_s(1003, 256) == 12.0
    assert bench.delete_budget_s(1003, 512) == 6.0
    assert bench.delete_budget_s(203, 256) == 3.0
    # With one VM's teardown as measured on the stack (its tasks' ends seen later).
    assert bench.delete_budget_s(1003, 256, one_vm_s=2.4) == 14.4
    assert bench.delete_budget_s(203, 256, one_vm_s=2.4) == 3.6


def test_budgets_show_at_the_sizes_they_bound() -> None:
    small = figures(20, ratio=1.05, delete_s=3.0, node_api_5xx=0, peak_rss_mb={"worker": 150.0})
    mid = figures(200, ratio=1.17)
    large = figures(997, ratio=1.65, delete_s=12.5, node_api_5xx=0, peak_rss_mb={"worker": 422.0})
    table = bench.report([small, mid, large])

    assert row(table, "ratio") == ["1.05", "1.17 [<= 1.25]", "1.65 [<= 2.0]"]
    assert row(table, "delete")[0] == "3.0 s"
    assert row(table, "delete")[2] == "12.5 s [<= 12.0 s]"
    timed = bench.report([figures(997, delete_s=12.5, one_vm_teardown_s=2.4)])
    assert row(timed, "delete") == ["12.5 s [<= 14.4 s]"]
    assert row(timed, "  one VM's power-off and destroy, measured; the budget with the task durations") == [
        "2.4 s; 12.0 s"
    ]
    assert row(table, "node API 5xx") == ["0", "0", "0 [<= 0]"]
    assert row(table, "peak RSS MB: worker / Temporal / node API")[2].startswith("422.0 [<= 400]")


def test_a_split_worker_reports_the_sum_of_its_two_processes() -> None:
    split = figures(997, peak_rss_mb={"worker": 320.0, bench.VCENTER_WORKER: 247.0, "temporal": 613.0})
    cells = row(bench.report([split]), "peak RSS MB: worker / Temporal / node API")
    assert cells == ["567.0 (320.0 + 247.0) [<= 400] / 613.0 / -"]
