#!/usr/bin/env python3
"""Where a failover's time goes, from a `warden chaos run` of a replicated control plane.

Usage: scripts/failover-profile.py OUT_DIR   (the run's --out: record.json and logs/)

For every leader kill in record.json, the new leader's log gives four moments: its election
watch saw the leader key deleted (the old leader's etcd lease expired), it won the campaign,
it loaded the store (took over), and it finished its first reconcile round (acting). Prints
kill -> key gone (lease expiry, etcd's expiry check and the watch), key gone -> won (the
campaign: lease grant and transaction), won -> took over (noticing the win and reading the
store), took over -> acting (the first reconcile), and their sum.
"""
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MARKS = {
    "gone": "the leader key is gone; campaigning",
    "won": "leader election: won; leading",
    "took": "took over as leader",
    "acting": "leader acting: first reconcile round done",
}


def stamp(line):
    ts = line.split()[0]
    t = datetime.strptime(ts[:26].rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=timezone.utc).timestamp() * 1000.0


def marks(log):
    out = []
    for raw in log.read_text(errors="replace").splitlines():
        line = ANSI.sub("", raw)
        for kind, text in MARKS.items():
            if text in line:
                term = re.search(r"term=(\d+)", line)
                out.append((stamp(line), kind, int(term.group(1)) if term else None))
    return out


def main():
    out = Path(sys.argv[1])
    rec = json.loads((out / "record.json").read_text())
    t0 = rec["start_unix_ms"]
    rows = []
    for f in rec["failovers"]:
        if not f.get("new_leader"):
            print(f"fault {f['fault']}: no new leader seen")
            continue
        kill = t0 + f["kill_ms"]
        term = f["new_term"]
        m = marks(out / "logs" / f"{f['new_leader']}.log")
        at = {k: next((t for t, kind, tm in m if kind == k and tm == term), None)
              for k in ("won", "took", "acting")}
        at["gone"] = max((t for t, kind, _ in m if kind == "gone" and kill <= t <= (at["won"] or 1e18)),
                         default=None)
        if None in at.values():
            print(f"fault {f['fault']}: incomplete log marks {at}")
            continue
        rows.append((at["gone"] - kill, at["won"] - at["gone"], at["took"] - at["won"],
                     at["acting"] - at["took"], at["acting"] - kill))
    print("kill->key gone  gone->won  won->took over  took over->acting  total (ms)")
    for r in rows:
        print("  ".join(f"{v:10.0f}" for v in r))

    def pct(v, p):
        v = sorted(v)
        return v[min(len(v) - 1, int(round(p * (len(v) - 1))))]

    if rows:
        for name, p in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
            print(name, "  ".join(f"{pct([r[i] for r in rows], p):10.0f}" for i in range(5)))


if __name__ == "__main__":
    main()
