"""Tabulate Nsight Compute raw CSVs (`ncu --import X.ncu-rep --page raw --csv`) as markdown.

    python benchmarks/ncu_summary.py benchmarks/results/ncu-v16-h100/*-raw.csv

One row per kernel launch: time, launch shape, what bounds occupancy, how busy the tensor
pipe and the issue slots were, DRAM traffic, and the warp stall reasons that cost most (in
cycles per issued instruction).  `gpu_session.sh ncu` makes the CSVs.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

TENSOR = "sm__pipe_tensor_type_hmma_hgmma_qgmma_imma_igmma_bmma_bgmma_cycles_active.avg.pct_of_peak_sustained_elapsed"
STALL = "smsp__average_warps_issue_stalled_"
STALL_END = "_per_issue_active.ratio"
SCALE = {"ns": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6, "second": 1e6}
LIMITS = ("registers", "shared_mem", "warps", "blocks", "barriers")


def num(s: str) -> float:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return float("nan")


def rows_of(path: str) -> list:
    """One dict per profiled launch: metric name -> (value, unit)."""
    with open(path, newline="") as f:
        r = list(csv.reader(f))
    if len(r) < 3:
        return []
    head, units = r[0], r[1]
    return [{h: (v, u) for h, u, v in zip(head, units, row)} for row in r[2:]]


def summary(case: str, m: dict) -> dict:
    v = {k: num(x[0]) for k, x in m.items()}
    dur_us = v["gpu__time_duration.sum"] * SCALE[m["gpu__time_duration.sum"][1]]
    tb_s = v["dram__bytes.sum.per_second"]
    tb_s *= {"t": 1.0, "g": 1e-3, "m": 1e-6}.get(m["dram__bytes.sum.per_second"][1][:1].lower(), float("nan"))
    limits = {k: v.get(f"launch__occupancy_limit_{k}", float("inf")) for k in LIMITS}
    per_sm = min(limits.values())
    bound = ", ".join(k for k, x in limits.items() if x == per_sm)
    stalls = sorted(((v[k], k[len(STALL):-len(STALL_END)]) for k in v
                     if k.startswith(STALL) and k.endswith(STALL_END) and not k.endswith("selected" + STALL_END)),
                    reverse=True)
    return dict(case=case, kernel=m["Kernel Name"][0] if "Kernel Name" in m else m.get("Function Name", ("?",))[0],
                us=dur_us, grid=int(v["launch__grid_size"]), block=int(v["launch__block_size"]),
                regs=int(v["launch__registers_per_thread"]),
                smem=v["launch__shared_mem_per_block"] * (1.0 if m["launch__shared_mem_per_block"][1].startswith("K") else 1e-3), per_sm=int(per_sm), bound=bound,
                warps=v.get("sm__warps_active.avg.per_cycle_active", float("nan")),
                tensor=v.get(TENSOR, float("nan")), issue=v["smsp__issue_active.avg.pct_of_peak_sustained_active"],
                dram_tb_s=tb_s, dram_gb=tb_s * dur_us / 1e3, l2_hit=v["lts__t_sector_hit_rate.pct"],
                stalls=", ".join(f"{name} {x:.2f}" for x, name in stalls[:4]))


def table(rows: list) -> str:
    out = ["| case | kernel | µs | grid × block | regs | smem kB | blocks/SM (bound) | tensor pipe % | "
           "issue % | DRAM TB/s (GB) | L2 hit % | top stalls (cycles per issued instruction) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        out.append(f"| {s['case']} | {s['kernel']} | {s['us']:.0f} | {s['grid']} × {s['block']} | {s['regs']} | "
                   f"{s['smem']:.0f} | {s['per_sm']} ({s['bound']}) | {s['tensor']:.1f} | {s['issue']:.1f} | "
                   f"{s['dram_tb_s']:.2f} ({s['dram_gb']:.2f}) | {s['l2_hit']:.0f} | {s['stalls']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+", help="raw-page CSVs, named ncu-<case>-raw.csv")
    ap.add_argument("--min-us", type=float, default=20.0, help="leave out launches shorter than this")
    args = ap.parse_args()
    rows = []
    for path in args.csv:
        case = os.path.basename(path).removeprefix("ncu-").removesuffix("-raw.csv")
        for m in rows_of(path):
            try:
                s = summary(case, m)
            except KeyError as e:
                sys.exit(f"{path}: no metric {e} (profile with gpu_session.sh ncu's sections)")
            if s["us"] >= args.min_us:
                rows.append(s)
    print(table(rows))


if __name__ == "__main__":
    main()
