"""Real-data benchmarks: teachers trained here, contenders compared in one run, figures in RESULTS.md."""
