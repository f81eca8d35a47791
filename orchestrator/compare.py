"""The papers' tables from MLflow: one row per model, test set x metric, mean ± std over seeds.

A sweep's cells are the child runs of its parent run (tag ``mlflow.parentRunId``), or, without a
known parent, the runs tagged ``se.sweep=<name>`` (``se.kind`` not ``sweep``). Per run the test-set
results are the metrics ``eval/<testset>/enhanced/<metric>`` (and ``.../noisy/<metric>`` for the
noisy input's row). Runs are grouped by their ``model.*`` params (model name plus ablation options)
and any other param that varies between the runs (a grid axis such as ``optim.lr``; not the seed,
``name``, ``mlflow.*``, ``launcher.*``); seeds are ``trainer.seed`` (one run per seed: the newest
wins). Statistics: the mean and the sample standard deviation (ddof = 1) over seeds; with one seed the std is ``None`` (JSON null, ``-`` in
tables). The noisy row averages the noisy metrics over every run that has them (they are equal
when the runs evaluated the same files).

    table = compare_sweep("runs/demo")          # a sweep folder (ledger.json) or a sweep name
    print(render(table, "md"))
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import mlflow_sweep
from orchestrator.errors import UserError
from orchestrator.mlflow_sweep import SweepRef

log = logging.getLogger(__name__)

METRIC_ORDER = ("pesq", "ssnr", "estoi", "si_sdr")  # the papers' column order
METRIC_LABELS = {"pesq": "PESQ", "ssnr": "SSNR", "estoi": "ESTOI", "si_sdr": "SI-SDR", "stoi": "STOI"}
METRIC_DIGITS = {"pesq": 3, "estoi": 3, "stoi": 3, "ssnr": 2, "si_sdr": 2}
FORMATS = ("md", "csv", "json", "latex")
FORMAT_FILES = {"md": "compare.md", "csv": "compare.csv", "json": "compare.json", "latex": "compare.tex"}
NOISY = "noisy"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@dataclass
class Stat:
    """Mean and sample std over ``n`` seeds (``std`` None when n == 1)."""

    mean: float
    std: float | None
    n: int
    values: list[float] = field(default_factory=list)


def summarize(values: list[float]) -> Stat:
    vals = [float(v) for v in values]
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Stat(statistics.mean(vals), std, len(vals), vals)


@dataclass
class Row:
    model: str  # display label
    params: int | None  # parameter count (param ``model.params``)
    stats: dict[tuple[str, str], Stat]  # (testset, metric) -> Stat
    seeds: list[str]
    noisy: bool = False
    settings: dict[str, str] = field(default_factory=dict)  # the params that define the row (model.*, grid axes)


@dataclass
class Table:
    sweep: str
    testsets: list[str]
    metrics: list[str]
    rows: list[Row]
    tracking_uri: str
    parent_run_id: str | None
    run_ids: list[str]


# ---------------------------------------------------------------- locating the runs


def resolve_sweep(
    sweep: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    root: str | os.PathLike = "runs",
) -> SweepRef:
    """A sweep folder (``ledger.json`` gives name, tracking URI, parent run), a sweep name whose
    folder is ``root/NAME``, or a bare sweep name (tag ``se.sweep``). An explicit ``tracking_uri``
    wins; else the ledger's, ``$MLFLOW_TRACKING_URI``, ``sqlite:///mlflow.db``."""
    ledger = None
    for cand in (Path(sweep), Path(root) / str(sweep)):
        path = cand / "ledger.json"
        if path.is_file():
            try:
                ledger = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: unreadable sweep ledger ({e})") from e
            if not isinstance(ledger, dict):
                raise UserError(f"{path}: expected a JSON object (a sweep ledger)")
            name = ledger.get("sweep") if isinstance(ledger.get("sweep"), str) else cand.resolve().name
            break
    if ledger is None:
        if Path(sweep).is_dir() or os.sep in str(sweep):
            raise UserError(f"{sweep}: no ledger.json here (expected a sweep folder or a sweep name)")
        name = str(sweep)
    ml = (ledger or {}).get("mlflow")
    ml = ml if isinstance(ml, dict) else {}
    uri = tracking_uri or ml.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    parent = ml.get("parent_run_id") if isinstance(ml.get("parent_run_id"), str) else None
    return SweepRef(name=name, tracking_uri=str(uri), parent_run_id=parent, experiment=experiment,
                    server_dir=ml.get("server_dir") if uri == ml.get("tracking_uri") else None)


# ---------------------------------------------------------------- building the table


def _parse_eval_key(key: str) -> tuple[str, str, str] | None:
    """``eval/vb/enhanced/pesq`` -> ``("vb", "enhanced", "pesq")`` (test-set names may hold '/')."""
    if not key.startswith("eval/"):
        return None
    parts = key[len("eval/") :].rsplit("/", 2)
    if len(parts) != 3 or parts[1] not in ("enhanced", "noisy") or not parts[0]:
        return None
    return parts[0], parts[1], parts[2]


NOT_SETTINGS = ("name", "trainer.seed", "model.params")  # differ per run, not per model/setting
NOT_SETTINGS_PREFIXES = ("mlflow.", "launcher.")


def _is_setting(key: str) -> bool:
    return key not in NOT_SETTINGS and not key.startswith(NOT_SETTINGS_PREFIXES)


def varying_params(runs: list) -> set[str]:
    """Params (other than the seed and per-run names) whose value differs between ``runs``: the
    sweep's grid axes besides the seed (e.g. ``optim.lr``), found without the sweep file."""
    keys = {k for r in runs for k in r.data.params if _is_setting(k)}
    return {k for k in keys if len({r.data.params.get(k) for r in runs}) > 1}


def _group_key(run, varying: set[str] = frozenset()) -> tuple[tuple[str, str], ...]:
    """What makes two runs the same row: every ``model.*`` param (name, ablation options) and every
    other varying setting; only the seed (and per-run names) may differ within a row."""
    params = run.data.params
    items = {k: v for k, v in params.items() if (k.startswith("model.") or k in varying) and _is_setting(k)}
    if "model.name" not in items:
        items["model.name"] = run.data.tags.get("se.model") or run.data.tags.get("se.cell") or "?"
    return tuple(sorted(items.items()))


def _seed(run) -> str:
    return run.data.params.get("trainer.seed") or run.data.tags.get("se.seed") or run.info.run_id


def _labels(keys: list[tuple[tuple[str, str], ...]]) -> dict:
    """Model name, plus ``k=v`` for the model.* settings that differ between groups."""
    varying = set()
    for k in {k for key in keys for k, _ in key}:
        if len({dict(key).get(k) for key in keys}) > 1:
            varying.add(k)
    labels = {}
    for key in keys:
        d = dict(key)
        extra = [f"{k[len('model.'):] if k.startswith('model.') else k}={d.get(k, '-')}"
                 for k in sorted(varying) if k != "model.name"]  # fmt: skip
        labels[key] = d["model.name"] + (f" ({', '.join(extra)})" if extra else "")
    return labels


def model_labels(runs: list) -> dict[str, str]:
    """run id -> its row label in the table (model name plus the settings that differ), for plots."""
    varying = varying_params(runs)
    keys = {r.info.run_id: _group_key(r, varying) for r in runs}
    labels = _labels(list(set(keys.values())))
    return {rid: labels[k] for rid, k in keys.items()}


def sweep_runs(sweep: str | os.PathLike, *, tracking_uri: str | None = None, experiment: str | None = None,
               root: str | os.PathLike = "runs") -> tuple[SweepRef, object, str | None, list]:
    """``(ref, client, parent_run_id, child runs)`` of a sweep, any status (for the curves)."""
    ref = resolve_sweep(sweep, tracking_uri=tracking_uri, experiment=experiment, root=root)
    client = mlflow_sweep.client(ref.tracking_uri, must_exist=True, server_dir=ref.server_dir)
    parent_id, runs = mlflow_sweep.find_sweep_runs(client, ref)
    return ref, client, parent_id, runs


def _params_count(runs: list) -> int | None:
    for r in runs:
        v = r.data.params.get("model.params") or r.data.metrics.get("model.params")
        if v is not None:
            try:
                return int(float(v))
            except ValueError:
                continue
    return None


def build_table(sweep: str, runs: list, *, metrics: list[str] | None = None,
                include_unfinished: bool = False) -> Table:  # fmt: skip
    """Group ``runs`` (MLflow Run objects) into the table. Only FINISHED runs count unless
    ``include_unfinished``; per (model, seed) the newest run counts."""
    chosen: dict[tuple, dict[str, object]] = {}
    runs = [r for r in runs if (r.info.status == "FINISHED" or include_unfinished)
            and any(_parse_eval_key(k) for k in r.data.metrics)]  # fmt: skip
    varying = varying_params(runs)
    for r in runs:
        key, seed = _group_key(r, varying), _seed(r)
        old = chosen.setdefault(key, {}).get(seed)
        if old is not None:
            log.warning("model %s seed %s: several runs (%s, %s); using the newest", dict(key)["model.name"],
                        seed, old.info.run_id, r.info.run_id)  # fmt: skip
            if (old.info.start_time or 0) > (r.info.start_time or 0):
                continue
        chosen[key][seed] = r
    found_metrics: set[str] = set()
    testsets: list[str] = []
    for by_seed in chosen.values():
        for r in by_seed.values():
            for k in r.data.metrics:
                parsed = _parse_eval_key(k)
                if parsed:
                    if parsed[0] not in testsets:
                        testsets.append(parsed[0])
                    found_metrics.add(parsed[2])
    testsets.sort()
    if metrics is None:
        metrics = [m for m in METRIC_ORDER if m in found_metrics] + sorted(found_metrics - set(METRIC_ORDER))
    labels = _labels(list(chosen))
    rows: list[Row] = []
    noisy_vals: dict[tuple[str, str], list[float]] = {}
    for key in sorted(chosen, key=lambda k: labels[k]):
        by_seed = chosen[key]
        stats = {}
        for ts in testsets:
            for m in metrics:
                vals = [r.data.metrics[f"eval/{ts}/enhanced/{m}"] for r in by_seed.values()
                        if f"eval/{ts}/enhanced/{m}" in r.data.metrics]  # fmt: skip
                if vals:
                    stats[(ts, m)] = summarize(vals)
                noisy_vals.setdefault((ts, m), []).extend(
                    r.data.metrics[f"eval/{ts}/noisy/{m}"] for r in by_seed.values()
                    if f"eval/{ts}/noisy/{m}" in r.data.metrics
                )  # fmt: skip
        seeds = sorted(by_seed, key=lambda s: (len(s), s))
        rows.append(Row(labels[key], _params_count(list(by_seed.values())), stats, seeds, settings=dict(key)))
    noisy = {k: summarize(v) for k, v in noisy_vals.items() if v}
    if noisy:
        rows.insert(0, Row(NOISY, None, noisy, [], noisy=True))
    run_ids = sorted(r.info.run_id for by_seed in chosen.values() for r in by_seed.values())
    return Table(sweep, testsets, metrics, rows, "", None, run_ids)


def compare_sweep(
    sweep: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    metrics: list[str] | None = None,
    include_unfinished: bool = False,
    root: str | os.PathLike = "runs",
) -> Table:
    """Find the sweep's runs and build its table. Raises UserError when no run has results."""
    ref = resolve_sweep(sweep, tracking_uri=tracking_uri, experiment=experiment, root=root)
    client = mlflow_sweep.client(ref.tracking_uri, must_exist=True, server_dir=ref.server_dir)
    parent_id, runs = mlflow_sweep.find_sweep_runs(client, ref)
    if not runs:
        raise UserError(f"sweep {ref.name}: no runs found at {ref.tracking_uri}")
    table = build_table(ref.name, runs, metrics=metrics, include_unfinished=include_unfinished)
    if not table.rows:
        raise UserError(
            f"sweep {ref.name}: {len(runs)} runs but none finished with eval/<testset>/enhanced/<metric> metrics"
        )
    table.tracking_uri, table.parent_run_id = ref.tracking_uri, parent_id
    return table


# ---------------------------------------------------------------- rendering


def _fmt(x: float, metric: str) -> str:
    return f"{x:.{METRIC_DIGITS.get(metric, 3)}f}"


def _cell_text(stat: Stat | None, metric: str, n_row: int, *, pm: str = "±") -> str:
    if stat is None:
        return "-"
    std = _fmt(stat.std, metric) if stat.std is not None else "-"
    text = f"{_fmt(stat.mean, metric)} {pm} {std}"
    return text + (f" (n={stat.n})" if stat.n != n_row else "")


def _row_n(row: Row) -> int:
    return max((s.n for s in row.stats.values()), default=0)


def _params_text(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def _columns(table: Table) -> list[tuple[str, str]]:
    return [(ts, m) for ts in table.testsets for m in table.metrics]


def to_records(table: Table) -> list[dict]:
    """The JSON form: one ``{model, testset, metric, mean, std, n, params}`` per table cell."""
    out = []
    for row in table.rows:
        for ts, m in _columns(table):
            s = row.stats.get((ts, m))
            if s is not None:
                out.append({"model": row.model, "testset": ts, "metric": m, "mean": s.mean, "std": s.std,
                            "n": s.n, "params": row.params})  # fmt: skip
    return out


def render_md(table: Table) -> str:
    cols = _columns(table)
    head = ["Model", "Params", "Seeds"] + [f"{ts} {METRIC_LABELS.get(m, m)}" for ts, m in cols]
    lines = [f"Sweep `{table.sweep}`: mean ± std (sample std, ddof=1) over seeds; "
             "`-` = one seed (no std) or no value.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]  # fmt: skip
    for row in table.rows:
        n = _row_n(row)
        cells = [row.model, _params_text(row.params), "-" if row.noisy else str(n)]
        cells += [
            (_fmt(row.stats[c].mean, c[1]) if c in row.stats else "-") if row.noisy
            else _cell_text(row.stats.get(c), c[1], n)
            for c in cols
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = _columns(table)
    w.writerow(["model", "params", "seeds"] + [f"{ts}/{m}/{k}" for ts, m in cols for k in ("mean", "std", "n")])
    for row in table.rows:
        line = [row.model, "" if row.params is None else row.params, "" if row.noisy else _row_n(row)]
        for c in cols:
            s = row.stats.get(c)
            line += ["", "", 0] if s is None else [repr(s.mean), "" if s.std is None else repr(s.std), s.n]
        w.writerow(line)
    return buf.getvalue()


def render_json(table: Table) -> str:
    return json.dumps(to_records(table), indent=2) + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("_", "\\_"), ("%", "\\%"), ("&", "\\&"), ("#", "\\#")):
        s = s.replace(a, b)
    return s


def render_latex(table: Table) -> str:
    cols = _columns(table)
    lines = [
        f"% sweep {_tex(table.sweep)}: mean $\\pm$ sample std over seeds; -- = one seed",
        "\\begin{tabular}{l r r " + " ".join("c" for _ in cols) + "}",
        "\\toprule",
    ]
    if len(table.testsets) > 1:
        spans = " & ".join(f"\\multicolumn{{{len(table.metrics)}}}{{c}}{{{_tex(ts)}}}" for ts in table.testsets)
        lines.append(f" & & & {spans} \\\\")
    head = ["Model", "Params", "Seeds"] + [METRIC_LABELS.get(m, _tex(m)) for _, m in cols]
    lines += [" & ".join(head) + " \\\\", "\\midrule"]
    for row in table.rows:
        n = _row_n(row)
        cells = [_tex(row.model), _params_text(row.params), "--" if row.noisy else str(n)]
        for c in cols:
            s = row.stats.get(c)
            if s is None:
                cells.append("--")
            elif row.noisy:
                cells.append(f"${_fmt(s.mean, c[1])}$")
            else:
                std = _fmt(s.std, c[1]) if s.std is not None else "\\mbox{--}"
                cells.append(f"${_fmt(s.mean, c[1])} \\pm {std}$" + (f" ({s.n})" if s.n != n else ""))
        lines.append(" & ".join(cells) + " \\\\")
        if row.noisy:
            lines.append("\\midrule")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


RENDERERS = {"md": render_md, "csv": render_csv, "json": render_json, "latex": render_latex}


# ---------------------------------------------------------------- the papers' layouts

PAPER_MODEL_NAMES = {"xlstm-senet": "xLSTM-SENet", "lstm-senet": "LSTM-SENet", "semamba": "SEMamba",
                     "mpsenet-official": "MP-SENet", "mpsenet": "MP-SENet (corrected)", "mambattention": "MambAttention",
                     "xlstm-attention": "xLSTM-Attention", "lstm-attention": "LSTM-Attention"}
TRAINING_DATA_NAMES = (("dns2020", "DNS 2020"), ("vb_demandex", "VB-DemandEx"))  # a data.train fragment -> name


@dataclass(frozen=True)
class PaperLayout:
    """One of the papers' tables: column groups (a fragment of the logged test-set name -> the paper's
    heading), the metrics under each, the row order, and whether rows name their training data."""

    caption: str
    groups: tuple[tuple[str, str], ...]
    metrics: tuple[str, ...]
    row_order: tuple[str, ...]
    by_training_data: bool = False

    def row_label(self, row: Row) -> str:
        name = row.settings.get("model.name", row.model)
        label = PAPER_MODEL_NAMES.get(name, name)
        if self.by_training_data:
            train = row.settings.get("data.train", "")
            data = next((text for frag, text in TRAINING_DATA_NAMES if frag in train), train or "?")
            label += f" ({data})"
        return label


PAPER_LAYOUTS = {
    "mambattention_table2": PaperLayout(
        "Table II (MambAttention, arXiv 2507.00966): DNSMOS on the DNS 2020 test sets",
        (("no_reverb", "Without Reverb"), ("real_recordings", "Real Recordings"), ("with_reverb", "With Reverb")),
        ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"),
        ("MambAttention (DNS 2020)", "MambAttention (VB-DemandEx)"), by_training_data=True),
    "mambattention_table5": PaperLayout(
        "Table V (MambAttention, arXiv 2507.00966): speech enhancement on the DNS 2020 test set without reverb",
        (("no_reverb", "DNS 2020 Without Reverb"),), ("pesq", "ssnr", "estoi", "si_sdr"),
        ("xLSTM-SENet", "LSTM-SENet", "SEMamba", "MP-SENet", "MambAttention")),
}
LAYOUTS = ("auto", "generic", *PAPER_LAYOUTS)
PAPER_LABELS = {"dnsmos_sig": "SIG", "dnsmos_bak": "BAK", "dnsmos_ovrl": "OVRL"}


def paper_layout(table: Table, layout: str = "auto") -> PaperLayout | None:
    """The paper layout to print ``table`` in: ``auto`` = the one named like the sweep, if any."""
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout == "generic":
        return None
    return PAPER_LAYOUTS.get(table.sweep if layout == "auto" else layout)


def render_paper(table: Table, layout: PaperLayout) -> str:
    """Markdown in the paper's layout: its column groups and order, its row names and order (rows the
    paper does not have come after), two decimals, the noisy input first."""
    cols = []
    for frag, heading in layout.groups:
        match = [ts for ts in table.testsets if frag in ts]
        if len(match) > 1:  # e.g. "no_reverb" must not also match a "with_no_reverb"
            match = [ts for ts in match if ts.split("/")[0].endswith(frag)] or match[:1]
        for m in layout.metrics:
            cols.append((match[0] if match else None, m, f"{heading} {PAPER_LABELS.get(m, METRIC_LABELS.get(m, m))}"))
    rows = [r for r in table.rows if r.noisy]
    models = sorted((r for r in table.rows if not r.noisy), key=lambda r: (
        layout.row_order.index(layout.row_label(r)) if layout.row_label(r) in layout.row_order else len(layout.row_order),
        layout.row_label(r)))
    seeds = sorted({_row_n(r) for r in models})
    lines = [f"{layout.caption}; sweep `{table.sweep}`, mean ± std over seeds (sample std, ddof=1), "
             f"{'/'.join(map(str, seeds)) or '0'} seed(s) per row; `-` = no value.", "",
             "| " + " | ".join(["Model", "Params"] + [c[2] for c in cols]) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(cols) + 1)) + "|"]
    for row in rows + models:
        n = _row_n(row)
        cells = ["Noisy" if row.noisy else layout.row_label(row), _params_text(row.params)]
        for ts, m, _ in cols:
            stat = row.stats.get((ts, m)) if ts else None
            if stat is None:
                cells.append("-")
            elif row.noisy:
                cells.append(f"{stat.mean:.2f}")
            else:
                std = f"{stat.std:.2f}" if stat.std is not None else "-"
                cells.append(f"{stat.mean:.2f} ± {std}" + (f" (n={stat.n})" if stat.n != n else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(table: Table, fmt: str = "md", layout: str = "generic") -> str:
    """``table`` as text; with ``fmt`` md, ``layout`` (`paper_layout`) may choose a paper's layout."""
    if fmt not in RENDERERS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chosen = paper_layout(table, layout) if fmt == "md" else None
    return render_paper(table, chosen) if chosen else RENDERERS[fmt](table)


def log_to_parent(table: Table) -> list[str]:
    """Log every format (``compare.md``, ``.csv``, ``.json``, ``.tex``) as artifacts of the
    sweep's parent run; returns the artifact names (none without a parent run)."""
    if not table.parent_run_id:
        return []
    client = mlflow_sweep.client(table.tracking_uri, must_exist=True)
    with tempfile.TemporaryDirectory() as d:
        for fmt, fname in FORMAT_FILES.items():
            Path(d, fname).write_text(render(table, fmt))
        client.log_artifacts(table.parent_run_id, d)
    return sorted(FORMAT_FILES.values())

