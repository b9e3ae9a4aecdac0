"""HKD4VLM hallucination detection: item format, pyramid distillation, shifted-mapping inference, metrics."""
