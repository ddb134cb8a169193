"""qlora-bench: what QLoRA run fits on this GPU, and how fast."""

__version__ = "0.1.0"
