"""meter's benchmarks: scripts, never timed tests. See BENCHMARKS.md at the repository's top."""
