"""lorafit: fit the best text classifier into a hard budget of trainable parameters with LoRA."""

__version__ = "0.1.0"
