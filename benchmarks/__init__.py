"""regproxy's benchmarks: ``python -m benchmarks.run`` (data path) and ``python -m benchmarks.scale``
(control side). See docs/performance.md for the figures and how they were taken."""
