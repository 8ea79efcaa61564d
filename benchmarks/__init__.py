"""Speed and search-efficiency benchmarks; each script prints one table (see README.md)."""
