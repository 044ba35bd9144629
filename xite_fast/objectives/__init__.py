"""Training objectives, tensors in and tensors out: OT alignment + drift penalty (ot.py), the EAR losses
(ear.py; the model-driving half is :mod:`xite_fast.train.ear`), English perturbations (perturb.py)."""
