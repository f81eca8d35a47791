"""The papers' noisy-input rows, and the same metrics of a user's test set beside them.

MambAttention (arXiv 2507.00966) Table I, "Noisy" row (also RWSA-MambaUNet's): PESQ (wide-band),
SSNR (dB), ESTOI, SI-SDR (dB) of the unprocessed noisy input against the clean reference. A test
set whose noisy metrics are far from its row is not the paper's test set (re-synthesised mixtures,
a different cut, a level or alignment problem).

    summary = noisy_summary("data/ears_wham_v2_official/test", num_workers=2)
    print(comparison_text(summary, paper_row_for(summary["testset"]) or "ears_wham_v2"))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from training.evaluation.metrics import DEFAULT_METRICS, check_metric_names, evaluate_pairs, summarize

PAPER_NOISY_ROWS: dict[str, dict[str, float]] = {
    "vb_demandex": {"pesq": 1.63, "ssnr": -1.07, "estoi": 0.63, "si_sdr": 4.98},
    "dns_no_reverb": {"pesq": 1.58, "ssnr": 6.22, "estoi": 0.81, "si_sdr": 9.07},
    "ears_wham_v2": {"pesq": 1.24, "ssnr": -0.80, "estoi": 0.64, "si_sdr": 5.36},
}
PAPER_TEST_SET_SIZES = {"vb_demandex": 826, "dns_no_reverb": 150, "ears_wham_v2": 886}


def paper_row_for(name: str) -> str | None:
    """The paper row a test-set name or path most likely means (None when no name part fits)."""
    s = name.lower().replace("-", "_")
    if "demandex" in s or "vb_d" in s:
        return "vb_demandex"
    if "dns" in s:
        return "dns_no_reverb"
    if "ears" in s:
        return "ears_wham_v2"
    return None


def noisy_summary(path: str, *, metrics: Sequence[str] = DEFAULT_METRICS, num_workers: int = 2,
                  limit: int | None = None, name: str | None = None, progress: bool = True) -> dict:
    """Metrics of the noisy input of the test set at ``path`` (no model): {"testset", "path", "n",
    "noisy": {metric: mean}, "failed": {metric: count}}."""
    from training.evaluation.testsets import open_testset

    ts = open_testset(path, name=name)
    metrics = check_metric_names(metrics)

    def pairs():
        for i, (key, noisy, clean) in enumerate(ts):
            if limit is not None and i >= limit:
                return
            yield key, clean, noisy

    total = len(ts) if limit is None else min(limit, len(ts))
    rows = evaluate_pairs(pairs(), num_workers=num_workers, metrics=metrics, progress=progress, total=total)
    s = summarize(rows)
    return {"testset": ts.name, "path": str(path), "n": len(rows), "noisy": s.means, "failed": s.failed}


def comparison_text(summary: dict, row: str | None) -> str:
    """A small table: this test set's noisy metrics, the paper's noisy row and the difference."""
    ours = summary["noisy"]
    paper = PAPER_NOISY_ROWS.get(row or "", {})
    metrics = [m for m in ("pesq", "ssnr", "estoi", "si_sdr") if m in ours] + \
        [m for m in ours if m not in ("pesq", "ssnr", "estoi", "si_sdr")]
    size = f", paper: {PAPER_TEST_SET_SIZES[row]} files" if row in PAPER_TEST_SET_SIZES else ""
    lines = [f"{summary['testset']}: {summary['n']} files{size} (noisy input, no model)",
             f"  {'':18s}" + "".join(f"{m:>9s}" for m in metrics)]

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:9.2f}"

    lines.append(f"  {'this test set':18s}" + "".join(f"{fmt(ours.get(m)):>9s}" for m in metrics))
    if paper:
        lines.append(f"  {('paper ' + row)[:18]:18s}" + "".join(f"{fmt(paper.get(m)):>9s}" for m in metrics))
        diff = {m: ours[m] - paper[m] for m in metrics if m in paper and not math.isnan(ours.get(m, math.nan))}
        lines.append(f"  {'difference':18s}" + "".join(f"{fmt(diff.get(m)):>9s}" for m in metrics))
    else:
        lines.append("  (no paper row for this name: pass --paper vb_demandex|dns_no_reverb|ears_wham_v2)")
    return "\n".join(lines)
