"""sft benchmarks: each case measures a candidate against a baseline in the same run."""
