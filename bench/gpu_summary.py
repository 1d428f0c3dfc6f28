"""bench/gpu.sh's summary: every step's outcome and every result file, merged into one JSON.

    python bench/gpu_summary.py WORK_DIR OUT_DIR [--print]

WORK_DIR holds what the steps wrote: steps.tsv (one line per step: name, exit status, seconds,
limit), run.json (how gpu.sh was started), env.json, checks.json, recipe-<name>.json,
throughput.json; any of them may be missing (a step failed or never ran). OUT_DIR/summary.json
gets all of it, rewritten after every step, so a run cut short still leaves what it measured.
--print adds the tables. Standard library only: it runs even where torch does not import.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TIMED_OUT = (124, 137)  # timeout(1): the limit passed; killed after its grace


def collect(work: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"run": _read(work / "run.json"), "steps": _steps(work / "steps.tsv")}
    for name in ("env", "checks", "throughput"):
        summary[name] = _read(work / f"{name}.json")
    recipes = [s["step"].removeprefix("recipe:") for s in summary["steps"] if s["step"].startswith("recipe:")]
    summary["recipes"] = [
        _read(work / f"recipe-{name}.json") or {"recipe": name, "error": "no result (see the step)"}
        for name in recipes
    ]
    summary["best"] = best_recipes(summary["recipes"])
    summary["headline"] = headline(summary)
    return summary


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a run is for, printed last as one JSON line."""
    keys = ("epochs_run", "wall_seconds", "best_val_accuracy", "test_accuracy", "images_per_second")
    recipes = {r["recipe"]: r for r in summary["recipes"] if r and "best_val_accuracy" in r}
    best = summary["best"].get("by_validation")
    throughput = (summary.get("throughput") or {}).get("reference") or {}
    return {
        "steps_not_ok": [s["step"] for s in summary["steps"] if s["status"] != "ok"],
        "default": {k: recipes["default"][k] for k in keys} if "default" in recipes else None,
        "best_by_validation": {"recipe": best, **{k: recipes[best][k] for k in keys}} if best else None,
        "throughput_over_reference": throughput.get("ratio"),
    }


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        step, rc, seconds, limit = line.split("\t")
        code = int(rc)
        status = (
            "ok" if code == 0 else "timed out" if code in TIMED_OUT else "skipped" if code < 0 else "failed"
        )
        rows.append(
            {"step": step, "rc": code, "status": status, "seconds": int(seconds), "limit": int(limit)}
        )
    return rows


def best_recipes(recipes: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The finished recipe with the best validation accuracy (selection never looks at test), and
    the fastest to finish."""
    done = [r for r in recipes if r and r.get("best_val_accuracy") is not None]
    if not done:
        return {}
    by_val = max(done, key=lambda r: r["best_val_accuracy"])
    fastest = min(done, key=lambda r: r["wall_seconds"])
    return {"by_validation": by_val["recipe"], "fastest": fastest["recipe"]}


# --- printing ------------------------------------------------------------------------------------------


def print_tables(summary: dict[str, Any]) -> None:
    run = summary.get("run") or {}
    print(f"\n== summary: {run.get('mode', '?')} run of {run.get('date', '?')}")
    print("| step | status | s | limit s |\n|---|---|---:|---:|")
    for s in summary["steps"]:
        print(f"| {s['step']} | {s['status']} (rc {s['rc']}) | {s['seconds']} | {s['limit']} |")
    checks = (summary.get("checks") or {}).get("checks", [])
    if checks:
        print("\n| check | status | detail |\n|---|---|---|")
        for c in checks:
            print(f"| {c['check']} | {c['status']} | {c['detail']} |")
    _print_recipes(summary["recipes"])
    _print_curve(summary["recipes"])
    throughput = summary.get("throughput") or {}
    if "reference" in throughput:
        ref = throughput["reference"]
        print(
            f"\nthroughput, ours / the report-style loop: {ref['ratio']:.2f}x "
            f"(report hyper-parameters on our engine: {ref['ratio_report_hparams']:.2f}x)"
        )
    if "cifar_stem" in throughput:
        stem = throughput["cifar_stem"]
        epochs = ", ".join(f"{p} {s:.1f} s" for p, s in stem["epoch_seconds"].items())
        print(f"CIFAR stem: bf16 / fp32 {stem['bf16_over_fp32']:.2f}x; an epoch of 45,000 images: {epochs}")
    best = summary.get("best") or {}
    if best:
        print(f"\nbest by validation: {best['by_validation']}; fastest to finish: {best['fastest']}")


def _print_recipes(recipes: list[dict[str, Any] | None]) -> None:
    if not recipes:
        return
    print(
        "\n| recipe | epochs | wall s | s/epoch | img/s | compile s | best val (epoch) | test | "
        "TTA chosen on val: test | GPU MiB |\n|---|---:|---:|---:|---:|---:|---|---:|---|---:|"
    )
    for r in recipes:
        if not r or "best_val_accuracy" not in r:
            why = (r or {}).get("skipped") or (r or {}).get("error") or "no result"
            print(f"| {(r or {}).get('recipe', '?')} | {why} | | | | | | | | |")
            continue
        compile_s = f"{r['compile_seconds']:.0f}" if r.get("compile_seconds") is not None else "-"
        memory = r.get("gpu_memory_mib") or {}
        peak = f"{memory['peak_allocated']:.0f}" if memory else "-"
        chosen = r["tta_chosen"]
        print(
            f"| {r['recipe']} | {r['epochs_run']} | {r['wall_seconds']:.1f} | "
            f"{r['train_seconds'] / r['epochs_run']:.2f} | {r['images_per_second']:.0f} | {compile_s} | "
            f"{r['best_val_accuracy']:.4f} ({r['best_epoch']}) | {r['test_accuracy']:.4f} | "
            f"{chosen['tta']}: {chosen['test_accuracy']:.4f} | {peak} |"
        )


def _print_curve(recipes: list[dict[str, Any] | None]) -> None:
    """The default recipe's curve: where validation and test accuracy stop improving."""
    default = next((r for r in recipes if r and r.get("recipe") == "default" and r.get("curve")), None)
    if default is None:
        return
    print("\ndefault recipe, epoch: val / test accuracy")
    cells = []
    for m in default["curve"]:
        test = f"{m['test_accuracy']:.4f}" if m.get("test_accuracy") is not None else "-"
        cells.append(f"{m['epoch']}: {m['val_accuracy']:.4f} / {test}")
    for start in range(0, len(cells), 5):
        print("  " + "   ".join(cells[start : start + 5]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--print", action="store_true", help="also print the tables")
    args = parser.parse_args(argv)
    summary = collect(args.work)
    target = args.out / "summary.json"
    temporary = target.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(summary, indent=2))
    temporary.replace(target)  # a reader (or a kill) never sees half a file
    if args.print:
        print_tables(summary)
        print(f"\nall of it: {target}; the headline:")
        print(json.dumps(summary["headline"]))


if __name__ == "__main__":
    main()
