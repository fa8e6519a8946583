"""gradflow's benchmark suite: ``python -m benchmarks --help``; see README.md beside this file."""
