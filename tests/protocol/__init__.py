"""Protocol v1 tests: vectors on both runtimes, reference check, properties, CLI."""
