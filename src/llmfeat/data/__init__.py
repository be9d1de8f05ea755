"""Input data: source loaders (``sources``), validation into canonical tables + quarantine, the ingest stage,
the canonical schemas, text templates, train/validation/test splits and the demo data set."""
