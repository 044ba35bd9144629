"""Fine-tuning inside Hugging Face ``Trainer``: config.py (XiteConfig, LabelMap), model.py (XiteModel, the
mixing wrapper around any AutoModelForSequenceClassification), collator.py (XiteDataset, XiteCollator),
trainer.py (XiteTrainer, train_xite, predict, match_sources, fit_lda), data.py (what train_xite reads: texts,
labels, augment results; an augment run streamed from its directory), align.py (OT pre-alignment),
ear.py (EAR runs: perturbed copies, XiteModel's EAR forward, EAR on a plain HF model)."""
