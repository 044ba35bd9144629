"""Training objectives: OT alignment + drift penalty, EAR losses, English perturbations."""
