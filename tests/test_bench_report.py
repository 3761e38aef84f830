"""bench/report.py, which turns the GPU session's one-call benchmark output into the README
tables: it must print the right ratios and bandwidths, also for a partial run."""
import json
import runpy
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parent.parent / "bench" / "report.py"


def loss_entry(impl, mean, loss="ce", size="1024x100", dtype="float32"):
    info = {"size": size, "impl": impl, "device": "cpu", "dtype": dtype}
    if impl != "copy":
        info["loss"] = loss
    return {"extra_info": info, "stats": {"mean": mean, "median": mean}}


def report_lines(tmp_path, capsys, entries):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": entries}))
    runpy.run_path(str(REPORT), run_name="report")["main"]([str(path)])
    return capsys.readouterr().out.strip().splitlines()


def table_row(lines, loss):
    rows = [line for line in lines if line.startswith(f"| {loss} |")]
    assert len(rows) == 1, lines
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_full_run_gives_speedups_and_bandwidth(tmp_path, capsys):
    B, C = 1024, 100
    lines = report_lines(tmp_path, capsys, [
        loss_entry("fused", 0.5e-3), loss_entry("eager", 1.5e-3), loss_entry("compiled", 1.0e-3),
        loss_entry("copy", 0.1e-3),
    ])
    row = table_row(lines, "ce")
    assert row[3:8] == ["0.500", "1.500", "1.000", "3.00x", "2.00x"]
    # Bytes: 4 B C float32 elements, labels and weights, three per-row float vectors.
    fused_bytes = 4 * B * C * 4 + B * 8 + B * 4 + 3 * B * 4
    assert row[8] == f"{fused_bytes / 0.5e-3 / 1e9:.0f}"
    assert row[9] == f"{2 * B * C * 4 / 0.1e-3 / 1e9:.0f}"


def test_partial_run_leaves_missing_columns_blank(tmp_path, capsys):
    lines = report_lines(tmp_path, capsys, [loss_entry("fused", 0.5e-3, loss="pm"), loss_entry("eager", 1.0e-3, loss="pm")])
    row = table_row(lines, "pm")
    assert row[3:8] == ["0.500", "1.000", "-", "2.00x", "-"]
    assert row[9] == "-"  # no copy was timed


def test_training_table(tmp_path, capsys):
    def epoch(feed, median, share):
        info = {"method": "jnpl", "batch_size": 128, "data": "cifar10", "device": "cuda", "feed": feed,
                "fused_op_share": share}
        return {"extra_info": info, "stats": {"mean": median, "median": median}}

    lines = report_lines(tmp_path, capsys, [epoch("dali", 10.0, 0.02), epoch("on_device", 8.0, 0.025)])
    row = table_row(lines, "jnpl")
    assert row[1:] == ["cifar10 (cuda)", "128", "10.00", "8.00", "20%", "2.5%"]


@pytest.mark.parametrize("missing", ["stats", "extra_info"])
def test_malformed_file_fails_loudly(tmp_path, capsys, missing):
    entry = loss_entry("fused", 0.5e-3)
    del entry[missing]
    with pytest.raises(KeyError):
        report_lines(tmp_path, capsys, [entry])
