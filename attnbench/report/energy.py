"""Energy per call and the GPU's power/clock state, as a table: a pure function of rows."""
from __future__ import annotations

from typing import Any, Iterable

import pandas as pd

from attnbench.report.render import markdown_table

ENERGY_COLUMNS = ("method", "n", "m", "dtype", "mode", "timing_mode", "latency_ms", "energy_j_per_call",
                  "energy_resolution_rel", "gpu_power_avg_w", "gpu_power_limit_w", "gpu_sm_clock_mhz_after",
                  "gpu_mem_clock_mhz_after", "gpu_temp_c_after", "throttle")


def energy_row(row: dict[str, Any]) -> dict[str, Any]:
    """One table line from a sweep row; throttle reasons seen before or after the loop, joined."""
    seen = (row.get("gpu_throttle_before") or []) + (row.get("gpu_throttle_after") or [])
    throttle = ",".join(dict.fromkeys(r for r in seen if r != "gpu_idle")) or None
    out = {k: row.get(k) for k in ENERGY_COLUMNS}
    out["timing_mode"] = (row.get("timing") or {}).get("mode", "eager")
    out["throttle"] = throttle
    return out


def energy_table(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with an energy reading, one line each, sorted by method, m, n (energy vs N per method).

    Columns: ENERGY_COLUMNS. Rows without ``energy_j_per_call`` (CPU, no NVML, failed points) are
    left out; ``throttle`` lists clock-limiting reasons other than idle, or None.
    """
    lines = [energy_row(r) for r in rows if r.get("status") == "ok" and r.get("energy_j_per_call") is not None]
    return sorted(lines, key=lambda r: (r["method"], r["m"] if r["m"] is not None else -1, r["timing_mode"], r["n"]))


def energy_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """``energy_table`` of a report's rows (NaN cells read as missing) as a frame of ENERGY_COLUMNS."""
    records = rows.astype(object).where(rows.notna(), None).to_dict("records")
    return pd.DataFrame(energy_table(records), columns=list(ENERGY_COLUMNS))


def energy_markdown(table: list[dict[str, Any]]) -> str:
    """The table as GitHub markdown, written as the report writes its tables."""
    return markdown_table(pd.DataFrame(table, columns=list(ENERGY_COLUMNS)))
