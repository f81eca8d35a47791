"""Training: the trainer and its parts; ``models/``, ``mamba/``, ``evaluation/``, ``kernels/`` (docs/architecture.md)."""
