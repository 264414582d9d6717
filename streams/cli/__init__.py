"""The `restyle` command and its client helpers."""
