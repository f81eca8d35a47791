"""The run folder's contract: the names of the files a run (WORKDIR, a sweep's cell folder) holds and
the exit codes of the programs that work in it, written once for every package.

What each file contains, who writes it and who reads it: docs/contracts.md ("Files the system writes").
"""

from __future__ import annotations

CONFIG_FILE = "config.yaml"  # the resolved RunConfig (training.config.save_config)
PROGRESS_FILE = "progress.json"  # {step, max_steps, best_pesq, state, ...} (training.progress)
RUN_ID_FILE = "mlflow_run_id"  # the run's MLflow run id, one line (training.tracking)
CHECKPOINTS_DIR = "checkpoints"  # step-N/, best/ (training.checkpoint)
EVAL_DIR = "eval"  # the end-of-run evaluation's per-file CSV and report (training.evaluation.final_eval)
LOCK_FILE = "run.lock"  # held by the live trainer (common.runlock)
EXIT_CODE_FILE = "exit_code"  # written by the job wrapper after the run ends (orchestrator.launchers)
ATTEMPTS_FILE = "attempts.log"  # one "start"/"end" line per job attempt (orchestrator.launchers)

EXIT_OK = 0  # finished
EXIT_FAILED = 1  # crashed (a traceback in the log)
EXIT_BAD_INPUT = 2  # bad config/arguments/input, one line, before any work (or a locked run folder)
EXIT_SOME_FAILED = 3  # enhance/evaluate: every good file done, the failed ones listed at the end
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: checkpointed after a signal or near the time limit; requeue/resume
EXIT_INTERRUPTED = 130  # `orchestrate`: stopped by Ctrl-C (128 + SIGINT), running cells asked to checkpoint
