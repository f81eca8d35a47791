"""Launchers: run sweep cells on SLURM (sbatch job arrays), as local processes, or on Ray.

Every launcher runs the same plain module command per cell (`base.cell_command`) and leaves the
same files in the cell folder (`base.EXIT_CODE_FILE`, `base.ATTEMPTS_FILE`), which is how the
orchestrator learns what happened without importing anything into the job.
"""
