"""Benchmarks (scripts, not tests): ``python -m tools.benchmarks <suite> [options]``.

Suites: ``kernels`` (paper Table 2: each strategy's FLOPs and latency vs dense attention, per backend),
``e2e`` (ComfyUI models at real geometry, unpatched vs DiTFastAttn Apply vs EasyCache) and
``calibration`` (plan search time in generations). ``--smoke`` shrinks any suite to a CPU-sized run.
"""
