"""Fine-tuning: learners by name, a DDP training loop with resume, WiSE-FT (paper Sec. 4)."""
