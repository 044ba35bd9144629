"""The XITE method: language LDA, matching, label transfer, interpolation, the augment pipeline."""
