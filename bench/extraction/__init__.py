"""The JSON-extraction SFT workload: data, the strict format-success metric, training."""
