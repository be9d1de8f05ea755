"""Cross-cutting machinery every stage shares: the typed config, the errors and their exit codes, the data
directory layout, atomic table writes, the stage-run skeleton and typed results, the Spark session."""
