"""report.json has exactly the issue's keys, each length's accuracy is the mean over its depths and samples."""
from megatron_ultralong.demo.report import REPORT_KEYS, ablation_markdown, report_json


def _grid(acc):
    cells = [{"length": n, "depth": d, "accuracy": a} for (n, d), a in acc.items()]
    return {"lengths": sorted({n for n, _ in acc}), "depths": sorted({d for _, d in acc}), "cells": cells,
            "accuracy": sum(acc.values()) / len(acc)}


def test_report_json_maps_every_length_to_its_mean_accuracy_over_depths():
    before = _grid({(128, 0.0): 1.0, (128, 1.0): 0.5, (2048, 0.0): 0.0, (2048, 1.0): 0.5})
    after = _grid({(128, 0.0): 1.0, (128, 1.0): 1.0, (2048, 0.0): 1.0, (2048, 1.0): 0.5})
    result = {"wall_time_s": 12.34, "window": 128, "target_length": 2048, "niah_before": before, "niah_after": after,
              "short_before": {"score": 0.8}, "short_after": {"score": 0.78}}
    rep = report_json(result)
    assert tuple(rep) == REPORT_KEYS
    assert rep["niah_before"] == {"128": 0.75, "2048": 0.25} and rep["niah_after"] == {"128": 1.0, "2048": 0.75}
    assert rep["short_score_after"] == 0.78 and rep["wall_time_s"] == 12.3


def test_the_ablation_table_has_a_row_per_variant_and_a_column_per_depth():
    grid = _grid({(2048, 0.0): 0.0, (2048, 0.5): 1.0, (2048, 1.0): 1.0})
    rows = [{"name": "none", "niah": grid, "short": {"score": 0.5}},
            {"name": "yarn-b4", "niah": grid, "short": {"score": 0.75}}]
    lines = ablation_markdown(rows, 2048)
    cells = lambda line: [c.strip() for c in line.split("|")[1:-1]]  # noqa: E731
    assert cells(lines[2]) == ["CPT rope", "0%", "50%", "100%", "NIAH@2048", "short score"]
    assert [cells(line) for line in lines[4:]] == [["none", "0.0", "1.0", "1.0", "67%", "0.500"],
                                                   ["yarn-b4", "0.0", "1.0", "1.0", "67%", "0.750"]]
