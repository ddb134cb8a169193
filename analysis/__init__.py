"""Analysis of the result CSVs: figures, GPU comparison, throughput projection, purchase summary."""
