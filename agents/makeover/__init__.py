"""Room makeover: detect, embed, retrieve, compose, depth, render (GPU), re-analyse."""
