"""Fine-tuning: stage 1 on English, stage 2 on XITE-augmented data, OT pre-alignment."""
