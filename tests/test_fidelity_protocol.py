"""One evaluation protocol for every path: a tiny RWSA-XS trained for 2 steps by a real `orchestrate
train` evaluates its best checkpoint on a test set at the end of the job; `orchestrate evaluate` on
the same checkpoint with the same mode gives the same numbers (1e-6), for the RWSA authors' segments
and for the papers' plain chunks. (Before: the end-of-job evaluation always chunked, whatever eval.mode.)"""

from __future__ import annotations

import json

import pytest
from conftest import train_overrides

from orchestrator.cli import main

METRICS = "[pesq,si_sdr,ssnr]"


def _train(corpus, root, *extra: str):
    """A 2-step run with an end-of-job evaluation on the corpus's test split; (run dir, its summary)."""
    run = root / "run"
    rc = main(["train", "rwsa-xs", *train_overrides(corpus, root / "mlflow.db", *extra),
               f"eval.testsets=[{corpus / 'test'}]", f"eval.metrics={METRICS}", "eval.num_workers=1",
               "--workdir", str(run)])
    assert rc == 0
    summary = json.loads((run / "eval" / f"{corpus.name}_test.json").read_text())
    assert json.loads((run / "eval" / "final.json").read_text())["done"]
    return run, summary


def _evaluate(run, corpus, out, capsys, *args: str) -> dict:
    capsys.readouterr()
    rc = main(["evaluate", str(run), "--testset", str(corpus / "test"), "--out", str(out), "--no-mlflow",
               "--json", "--workers", "1", *args])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("mode,extra,cli", [
    # one zero-padded 30,600-sample segment per 1-1.5 s clip (the seam: tests/test_fidelity_segments.py)
    ("rwsa_segments", ["eval.mode=rwsa_segments"], ["--mode", "rwsa_segments"]),
    # plain 0.5 s chunks (the papers' cuts, shortened to the clips)
    ("chunked", ["eval.mode=chunked", "eval.chunk_seconds=0.5", "eval.overlap_seconds=0"],
     ["--mode", "chunked", "--chunk-seconds", "0.5", "--overlap-seconds", "0"]),
])
def test_end_of_job_metrics_equal_orchestrate_evaluate(mode, extra, cli, journey_corpus, tmp_path, capsys):
    run, at_end = _train(journey_corpus, tmp_path, *extra)
    again = _evaluate(run, journey_corpus, tmp_path / "again", capsys, *cli)
    assert at_end["n"] == again["n"] == 3 and at_end["scored"] == 3
    assert set(at_end["enhanced"]) == {"pesq", "si_sdr", "ssnr"}
    for metric, value in at_end["enhanced"].items():
        assert again["enhanced"][metric] == pytest.approx(value, abs=1e-6), metric
    # the run config's own mode is the default of `orchestrate evaluate` too
    default = _evaluate(run, journey_corpus, tmp_path / "default", capsys)
    assert default["enhanced"] == pytest.approx(at_end["enhanced"], abs=1e-6)
    # and another protocol on the same checkpoint gives other numbers: the comparison can fail
    other = ["--mode", "whole"]
    whole = _evaluate(run, journey_corpus, tmp_path / "whole", capsys, *other)
    assert max(abs(whole["enhanced"][m] - at_end["enhanced"][m]) for m in at_end["enhanced"]) > 1e-3
