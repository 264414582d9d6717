"""Conditioned generation: bucket events or uploads -> a canny, segmentation or depth map ->
ControlNet render (GPU) into an output prefix."""
