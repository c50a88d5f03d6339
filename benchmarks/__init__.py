"""Performance benchmarks (scripts, not timed tests): ``python -m benchmarks [--quick]``; docs/benchmarks.md."""
