"""The Open Inference Protocol v2 (KServe, Triton, MLServer, Seldon) over the same engine."""
