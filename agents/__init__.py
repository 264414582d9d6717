"""CPU stages: image decoding, detection, embedding, retrieval, prompt composition, depth."""
