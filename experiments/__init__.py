"""Research drivers of the checkout (not installed): the fine-tuning experiment
(``python -m experiments.driver``, also ``xite-fast experiment`` from a checkout), the frozen-encoder
analysis (``python -m experiments.transfer``) and the tables / plots generated from their results
(``python -m experiments.tables``)."""
