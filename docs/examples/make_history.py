"""Write docs/examples/chat-history.csv: 8 hours of per-minute counts for the chat-assistant-canary playbook.

Seeded Poisson traffic: 20,000 canary answers a minute (60,000 on the control cohort), hallucinations at 27 per
10k on both cohorts (the canary is as good as the old model), moderation blocks at 24 per 10k, and from hour 6
the canary's moderation blocks rise to 36 per 10k (1.5x; a real regression). Column ``healthy`` marks the first
six hours; ``deploy_id`` is an unrelated column the backtest ignores (with a warning).

    python docs/examples/make_history.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

rng = np.random.default_rng(20261129)
rows = []
for minute in range(8 * 60):
    canary, control = 20_000, 60_000
    moderation = 24 if minute < 360 else 36
    rows.append({
        "timestamp": minute * 60,
        "hallucination-rate.events": int(rng.poisson(canary * 27e-4)),
        "hallucination-rate.outputs": canary,
        "hallucination-rate.control_events": int(rng.poisson(control * 27e-4)),
        "hallucination-rate.control_outputs": control,
        "moderation-failures.events": int(rng.poisson(canary * moderation * 1e-4)),
        "moderation-failures.outputs": canary,
        "latency-p95": round(float(rng.normal(2.1, 0.2)), 2),
        "healthy": "yes" if minute < 360 else "no",
        "deploy_id": "d-1842",
    })
path = Path(__file__).with_name("chat-history.csv")
with path.open("w", newline="") as out:
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
print(f"wrote {path} ({len(rows)} rows)")
