"""Input records (txt / jsonl / tsv / parquet readers) and the bundled offline data sets."""
