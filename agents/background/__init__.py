"""Background replacement: batches (and Titan-compatible bodies) expanded into one job per
image; mask, inpaint (GPU), composite."""
