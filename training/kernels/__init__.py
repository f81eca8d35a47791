"""CPU kernels and their build: the C sources (``csrc/``), their compile-and-cache loader (``native``),
the inference attention kernel (``attention_cpu``) and glibc malloc settings (``malloc_tuning``)."""
