"""Evaluation: metrics (PESQ, ESTOI, SI-SDR, SSNR, composite), test sets, chunked and segment-wise
enhancement, loading a trained checkpoint for inference, the end-of-run evaluation, analysis figures."""
