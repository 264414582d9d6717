"""The GPU diffusion worker: its own process and consumer group (`restyle gpu-worker`)."""
