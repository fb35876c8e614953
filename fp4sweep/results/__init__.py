"""The results contract: the Parquet store, its row schema, trial ids, and the one definition of
the quality gap and of a diverged run, shared by the runner, the adaptive search and the report."""
