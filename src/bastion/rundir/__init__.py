"""The run directory: the files a training run writes and every reader reads. Pure Python (no torch).

It is the second contract after ParallelPlan: `runtime/` writes it; `report/`, `launch/` and the commands read it,
all through this package.
- layout: the file names (metrics.jsonl, summary.json, plan.json, model.json, checkpoints/) and plan/model files
- records: the step record and every event kind of metrics.jsonl (EVENT_KINDS)
- metrics: append to / read metrics.jsonl (one write per line; a torn line is skipped and counted)
- summary: summary.json (RunSummary), written at the end, read back (older summaries too)
- checkpoints: committed checkpoint directories (atomic commit, manifest, retention, listing)
- accounting: what failures cost (productive / lost / recovery / checkpoint stall, goodput)
- predicted: the predictor's figures for a run (summary.json's `predicted`, `bastion report --cluster`)
"""
