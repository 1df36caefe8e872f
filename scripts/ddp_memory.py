"""Peak memory of every process of a training command (DDP ranks included), sampled from /proc.

    python scripts/ddp_memory.py [--interval 0.2] [--json OUT.json] -- python -m sslpath.train trainer=ddp ...

Every `--interval` seconds it reads /proc/<pid>/smaps_rollup of the command and its descendants: per
process the peak RSS (VmHWM, exact) and the peak PSS (proportional set size: shared pages divided
among the processes mapping them, sampled), and across processes the peak of their summed RSS and of
their summed PSS. Summed PSS is the node's real footprint: pages two ranks share count once in it,
twice in summed RSS. Linux only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")


def children(pid: int) -> list[int]:
    """The process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def sample(pid: int) -> dict[str, int] | None:
    """kB of each FIELD and VmHWM for one process; None once it is gone."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    values = {}
    for line in rollup + status:
        name, _, rest = line.partition(":")
        if name in (*FIELDS, "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def watch(command: list[str], interval: float) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    per_pid: dict[int, dict[str, int]] = {}
    peak_sum = {"Rss": 0, "Pss": 0}
    while proc.poll() is None:
        now = {p: s for p in children(proc.pid) if (s := sample(p)) is not None}
        for p, s in now.items():
            seen = per_pid.setdefault(p, {})
            for name, value in s.items():
                seen[name] = max(seen.get(name, 0), value)
        for name in peak_sum:
            peak_sum[name] = max(peak_sum[name], sum(s.get(name, 0) for s in now.values()))
        time.sleep(interval)
    big = {p: s for p, s in per_pid.items() if s.get("VmHWM", 0) > 100_000}  # the Python processes, not shells
    return {
        "command": command,
        "returncode": proc.returncode,
        "wall_s": round(time.perf_counter() - start, 1),
        "processes": {str(p): {k: round(v / 1024) for k, v in s.items()} for p, s in big.items()},
        "peak_sum_rss_mib": round(peak_sum["Rss"] / 1024),
        "peak_sum_pss_mib": round(peak_sum["Pss"] / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to watch after --")
    result = watch(command, args.interval)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    sys.exit(result["returncode"])


if __name__ == "__main__":
    main()
