"""benchmarks/RESULTS.md, generated from the benchmark records in benchmarks/results/*.json, so that no
figure is typed by hand. Each record says what was measured, when, on which machine, at which commit and
with which command; a record copied from an earlier README says so in its ``source``.

    python benchmarks/results.py                 # rewrite benchmarks/RESULTS.md (and README.md's headline table)
    python benchmarks/results.py --check         # exit 1 if either is not what the records generate
    python benchmarks/results.py record NAME --title "Encoder, GPU" -- python benchmarks/encode.py --device cuda
        # run a benchmark, keep its JSON output as benchmarks/results/NAME.json with date, machine,
        # commit and command filled in, then regenerate

A record: ``title``, ``benchmark``, ``command``, ``date`` (``date_note`` when it is not the day of the
measurement), ``machine``, ``commit``, ``source``, ``conditions``, then either a table (``columns``,
``rows``) or the script's raw ``output``; optionally ``headline``: figures for the README's table, each
``{"figure": label, "cells": [[row, column], ...]}`` (table records) or ``{"figure", "paths":
["a.b.c", ...]}`` (output records).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "benchmarks" / "results"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
README = REPO / "README.md"
HEADLINE = "headline"


def load(records: Path = RECORDS) -> dict[str, dict]:
    """Every record, by file stem, in name order."""
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(records.glob("*.json"))}


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return str(value) if len(str(value)) <= 6 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(columns: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return out


def _path(output: dict, dotted: str):
    value = output
    for key in dotted.split("."):
        value = value[key]
    return value


def _fit_fusion_tables(output: dict) -> list[str]:
    """benchmarks/fit_fusion.py: recall@1 per ranking, then the acceptance score against its inputs."""
    recall = output["recall_at_1"]
    rows = [[name, r["n_queries_with_match"], r["global"], r["spatial"], r["ransac"], r["fused"],
             r["fused_leave_one_set_out"]] for name, r in recall.items()]
    out = ["Recall@1 of each ranking:", ""]
    out += _table(["set", "queries with a match", "global", "spatial", "RANSAC", "fused", "fused, set left out"], rows)
    scores = list(next(iter(output["acceptance"].values())))
    rows = [[name] + [f"{s[k]['recall_at_100_precision']:.3g} / {s[k]['auc']:.3g}" for k in scores]
            for name, s in output["acceptance"].items()]
    out += ["", "Acceptance (each set's top-1 proposals ranked by one score): recall at 100 % precision / PR AUC:", ""]
    out += _table(["set"] + scores, rows)
    runs = output.get("acceptance_runs", {})
    if runs:
        scores = list(next(iter(runs.values()))["k1"])
        rows = [[name, k] + [f"{v[k][s]['recall_at_100_precision']:.3g} / {v[k][s]['auc']:.3g}" if s in v[k] else ""
                             for s in scores] for name, v in runs.items() for k in v]
        out += ["", "Acceptance along runs (what the node's rule accepts; consistency k1 / k3): recall at 100 % "
                "precision / PR AUC:", ""]
        out += _table(["run", "rule"] + scores, rows)
    out += ["", f"Shipped model: `{json.dumps(output['model'])}`; its 99 %-precision threshold on the pooled sets: "
            f"{output['threshold_at_99_precision']} (pooled PR AUC {output['pooled_auc']}, recall at 100 % precision "
            f"{output['pooled_recall_at_100_precision']:.3g})."]
    if "dominance" in output:
        dom = output["dominance"]
        out += ["", f"Single-frame acceptance against its best input, over every set and single-frame run "
                    f"(the smallest difference of recall at 100 % precision or PR AUC): {dom['fitted']} for the "
                    f"shipped model, {dom['best_linear']} for the best linear weighting of the three scores of "
                    f"any sign (2-degree grid; direction {dom['best_linear_direction']})."]
    return out


def _flat(output, prefix: str = "") -> list[list]:
    if isinstance(output, dict):
        return [row for k, v in output.items() for row in _flat(v, f"{prefix}{k}.")]
    if isinstance(output, list) and output and isinstance(output[0], (dict, list)):
        return [row for i, v in enumerate(output) for row in _flat(v, f"{prefix}{i}.")]
    return [[prefix.rstrip("."), json.dumps(output) if isinstance(output, list) else output]]


def _rows_of(items: list[dict]) -> list[str]:
    """A list of result objects as one table: a column per key (nested values flattened)."""
    flat = [dict(_flat(item)) for item in items]
    columns = list(dict.fromkeys(k for row in flat for k in row))
    return _table(columns, [[row.get(c) for c in columns] for row in flat])


def _generic_tables(output: dict) -> list[str]:
    """Scalars and small objects as key/value rows; each list of result objects as a table of its own."""
    scalars = {k: v for k, v in output.items()
               if not (isinstance(v, list) and v and all(isinstance(i, dict) for i in v))}
    out = _table(["key", "value"], _flat(scalars)) if scalars else []
    for key, items in output.items():
        if key not in scalars:
            out += ["", f"`{key}`:", ""] + _rows_of(items)
    return out


def _train_tables(output: dict) -> list[str]:
    """benchmarks/train.py: recall@1 before and after training, calibrate, the epochs (and a sweep)."""
    sets = {k: v for k, v in output.items() if isinstance(v, dict) and "global" in v.get("before", {})}
    out = ["Recall@1 before and after training (fused: the preset's fused model; calibrated: each "
           "checkpoint's fused model refitted on the validation places):", ""]
    out += _table(["set", "global before", "global after", "fused before", "fused after", "fused calibrated before",
                   "fused calibrated after"],
                  [[k, v["before"]["global"], v["after"]["global"], v["before"]["fused"], v["after"]["fused"],
                    v["before"].get("fused_calibrated"), v["after"].get("fused_calibrated")] for k, v in sets.items()])
    cal = output.get("calibrate")
    if cal and "validation" in cal:
        val, test = cal["validation"], cal.get("test")
        line = (f"train's calibration at precision {cal['precision_target']} on its {val['n_queries']} validation "
                f"frames: ")
        if val.get("score_threshold") is None:
            line += "no threshold reaches it."
        else:
            line += (f"threshold {val['score_threshold']:.3f}, precision {val['precision']:.3g}, recall "
                     f"{val['recall']:.3g} there; on the {test['n_queries']} unseen places precision "
                     f"{test['precision']:.3g}, recall {test['recall']:.3g}.")
        out += ["", line]
    elif cal:
        out += ["", f"calibrate at precision {cal['precision_target']}: threshold {cal['threshold']:.3f}; "
                f"on its own queries precision {cal['calibration_half']['precision']:.3g}, recall "
                f"{cal['calibration_half']['recall']:.3g}; on the held-out half precision "
                f"{cal['test_half']['precision']:.3g}, recall {cal['test_half']['recall']:.3g}."]
    if output.get("calibrate_precisions"):
        out += ["", "The same calibration at other precisions (validation frames), applied to the unseen places "
                "(recall 0: nothing accepted):", ""]
        out += _table(["precision asked", "threshold", "validation precision", "validation recall", "unseen precision",
                       "unseen recall"],
                      [[c["precision_target"], c["threshold"], c["validation"]["precision"], c["validation"]["recall"],
                        (c.get("test") or {}).get("precision"), (c.get("test") or {}).get("recall")]
                       for c in output["calibrate_precisions"]])
    whitening = output.get("training", {}).get("whitening") or {}
    if whitening.get("method") == "learned":
        out += ["", f"Learned whitening: {whitening['num_pairs']} pairs of one place, PCA to {whitening['pca_dims']} "
                f"dims, shrinkage {whitening['shrinkage']:g}, chosen on the validation places (recall@1 "
                f"{whitening['validation_recall']['1']:.3f}) among:", ""]
        out += _table(["PCA dims", "shrinkage", "validation R@1", "validation R@5"],
                      [[g["pca_dims"], g["shrinkage"], round(g["recall"]["1"], 3), round(g["recall"]["5"], 3)]
                       for g in whitening["grid"]])
    epochs = output.get("training", {}).get("epochs", [])
    if epochs:
        out += ["", "Epochs (validation places):", ""]
        out += _table(["epoch", "train loss", "val loss", "R@1", "R@5", "R@10", "seconds"],
                      [[e["epoch"], e["train_loss"], e["loss"], e["recall"]["1"], e["recall"]["5"], e["recall"]["10"],
                        round(e["seconds"])] for e in epochs])
    if output.get("sweep"):
        out += ["", "Variants tried (short runs, same baseline and test places):", ""] + _rows_of(output["sweep"])
    return out


def _before_after_runs(output: dict) -> list[str]:
    """Runs of benchmarks/node.py before and after a change: one row per run, then the medians."""
    rows = []
    for side in ("before", "after"):
        for i, run in enumerate(output[side]["runs"], 1):
            for r in run["results"]:
                detector = r["store_sizes"]["by_store_size"][0]["processed_rate_hz"]
                rows.append([side, i, r["processed_rate_hz"], detector, r["node_to_detector_rate"],
                             f"{r['latency_ms']['median']} / {r['latency_ms']['p95']}",
                             f"{r['cpu_s_per_frame']['node']} + {r['cpu_s_per_frame']['children']}"])
    out = [f"- **before**: {output['before']['code']}", f"- **after**: {output['after']['code']}", ""]
    out += _table(["code", "run", "node processed (Hz)", "detector in-process (frames/s)", "node / detector",
                   "latency median / p95 (ms)", "CPU s per processed frame (node + children)"], rows)
    medians = []
    for side in ("before", "after"):
        mine = [row for row in rows if row[0] == side]
        medians.append([side] + [float(np.median([row[c] for row in mine])) for c in (2, 3, 4)])
    out += ["", "Medians:", ""] + _table(["code", "node processed (Hz)", "detector in-process (frames/s)",
                                          "node / detector"], medians)
    return out


RENDERERS = {"benchmarks/fit_fusion.py": _fit_fusion_tables, "benchmarks/train.py": _train_tables}


def _renderer(rec: dict):
    output = rec.get("output", {})
    if all(isinstance(output.get(side), dict) and "runs" in output[side] for side in ("before", "after")):
        return _before_after_runs
    return RENDERERS.get(rec.get("benchmark"), _generic_tables)


def render_record(name: str, rec: dict) -> list[str]:
    out = [f"## {rec['title']}", "", f"<a id=\"{name}\"></a>Record `benchmarks/results/{name}.json`.", ""]
    date = rec["date"] + (f" ({rec['date_note']})" if rec.get("date_note") else "")
    for label, value in (("Date", date), ("Machine", rec["machine"]), ("Commit", f"`{rec['commit']}`"),
                         ("Command", f"`{rec['command']}`"), ("Source", rec["source"]),
                         ("Conditions", rec.get("conditions"))):
        if value:
            out.append(f"- **{label}**: {value}")
    out.append("")
    if "rows" in rec:
        out += _table(rec["columns"], rec["rows"])
    else:
        out += _renderer(rec)(rec["output"])
    if rec.get("notes"):
        out += ["", rec["notes"]]
    return out + [""]


def render(records: dict[str, dict] | None = None) -> str:
    """The whole of benchmarks/RESULTS.md."""
    records = load() if records is None else records
    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/results.py` from the records in `benchmarks/results/*.json`: do not "
           "edit by hand. Add a record with `python benchmarks/results.py record NAME --title TITLE -- python "
           "benchmarks/<script>.py ...`, which fills in the date, machine, commit and command.", "",
           "The timing scripts print JSON: the median of several runs after a warm-up, with the official "
           "implementation timed in the same run on the same input where there is one (ratio = ours / "
           "reference). `make bench [DEVICE=cuda]` runs them all (`--device cuda`; `--half` for an fp16 encoder "
           "in `encode.py` and `node.py`; `mapdb.py --faiss-gpu` also searches with faiss-gpu); each script's "
           "`--help` lists its options. Timings from the shared development machine move with its load; each "
           "record states its conditions.", ""]
    out += [f"- [{rec['title']}](#{name})" for name, rec in records.items()] + [""]
    for name, rec in records.items():
        out += render_record(name, rec)
    return "\n".join(out).rstrip() + "\n"


def headline_table(records: dict[str, dict] | None = None) -> str:
    """The README's headline-figures table: the records' ``headline`` figures, each with date and machine."""
    records = load() if records is None else records
    rows = []
    for name, rec in records.items():
        for item in rec.get("headline", []):
            if "cells" in item:
                values = [rec["rows"][r][rec["columns"].index(c)] for r, c in item["cells"]]
            else:
                values = [_path(rec["output"], p) for p in item["paths"]]
            rows.append([item["figure"], "; ".join(_cell(v) for v in values), rec["date"] + ("*" * bool(rec.get("date_note"))),
                         rec["machine"].split(",")[0], f"[{name}](benchmarks/RESULTS.md#{name})"])
    out = _table(["figure", "value", "date", "machine", "record"], rows)
    if any("*" in row[2] for row in rows):
        out += ["", "\\* the day the figure was recorded in the README; the record says the measurement date was not stated."]
    return "\n".join(out)


def replace_block(text: str, block: str, content: str, path: str = "") -> str:
    """``text`` with the lines between ``<!-- generated:block -->`` and ``<!-- end generated:block -->``
    replaced by ``content``."""
    begin, end = f"<!-- generated:{block} -->", f"<!-- end generated:{block} -->"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"error: {path or 'the text'} needs exactly one '{begin}' ... '{end}' block")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.machine())
    parts = [f"{os.cpu_count()} CPU cores ({cpu})", platform.platform()]
    try:
        import torch
        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.insert(0, torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ", ".join(parts)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _commit() -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def record(name: str, title: str, command: list[str], conditions: str = "") -> Path:
    """Run ``command`` (a benchmark printing one JSON object) and keep its output as a record."""
    proc = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} exited with {proc.returncode}; nothing recorded")
    try:
        output = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {' '.join(command)} did not print one JSON object ({exc}); nothing recorded")
    script = next((c for c in command if c.startswith("benchmarks/")), command[0])
    rec = {"title": title, "benchmark": script, "command": shlex.join(command),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "machine": _machine(),
           "commit": _commit(), "source": "the benchmark's JSON output, recorded by benchmarks/results.py",
           "conditions": conditions, "output": output}
    path = RECORDS / f"{name}.json"
    path.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def generated() -> dict[Path, str]:
    """What RESULTS.md and README.md must contain."""
    readme = README.read_text(encoding="utf-8")
    return {RESULTS_MD: render(), README: replace_block(readme, HEADLINE, headline_table(), "README.md")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md or the README table is stale")
    sub = parser.add_subparsers(dest="action")
    rec = sub.add_parser("record", help="run a benchmark and keep its JSON output as a record")
    rec.add_argument("name", help="record file name (benchmarks/results/NAME.json)")
    rec.add_argument("--title", required=True)
    rec.add_argument("--conditions", default="", help="what the machine was doing, input sizes, ...")
    rec.epilog = "then -- and the benchmark command, e.g. -- python benchmarks/encode.py --runs 5"
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[argv.index("--") + 1:] if "--" in argv else []  # record: the benchmark command after --
    args = parser.parse_args(argv[:len(argv) - len(command) - 1] if "--" in argv else argv)
    if args.action == "record":
        if not command:
            parser.error("record needs the benchmark command after --")
        print(record(args.name, args.title, command, args.conditions))
    stale = [path for path, text in generated().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(REPO)} (run python benchmarks/results.py)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated().items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
