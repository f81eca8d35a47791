"""A sweep's route, one module a step: `spec` (the sweep file) → `plan` (built once per command:
typed cells, profile, MLflow store) → `run` (MLflow parent run, ledger, launcher) → `status` (the
sweep folder read back). The CLI modules (`orchestrator.commands.sweep`, `plan`, `status`, `cancel`,
`resume`) only parse arguments and call these."""
