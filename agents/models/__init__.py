"""Model wrappers, one per role, each loaded with `from_pretrained` from a model id or a local
directory; the device choice; tiny random-weight builders for tests."""
