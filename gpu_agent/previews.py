"""Previews of a render in progress: every RESTYLE_PREVIEW_EVERY_STEPS denoising steps, a small
JPEG of what the latents show so far, sent with the step's progress event (a page shows it
sharpening as the render proceeds).

By default the latents are mapped to colour by a fixed linear projection per model family (each
of the VAE's four latent channels contributes a fixed amount of red, green and blue): a matrix
product on a 64x64 grid, no model call, so a preview costs well under a millisecond besides
its JPEG. With RESTYLE_PREVIEW_DECODER set to a tiny VAE (an AutoencoderTiny such as
`madebyollin/taesd`, or `madebyollin/taesdxl` for SDXL) the latents are decoded by it instead:
sharper, at the cost of a small model call. The latents are first shrunk to what the preview's
size needs (its side over the decoder's upscaling), so that call costs the same whatever the
render's size: a 1024 px render's 128x128 latents would take a tiny VAE about 100 times the
work of a preview's 12x12, for nothing the preview shows.
"""
from __future__ import annotations

import base64
import io
import math

import torch
import torch.nn.functional as F
from PIL import Image

# Latent channel -> (red, green, blue), fitted for each family's VAE; plus a bias for SDXL's.
# The projection lands roughly in [-1, 1].
LATENT_RGB = {
    "sd15": ([[0.298, 0.207, 0.208],
              [0.187, 0.286, 0.173],
              [-0.158, 0.189, 0.264],
              [-0.184, -0.271, -0.473]], [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341],
              [-0.2533, -0.0042, 0.1068],
              [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}
JPEG_QUALITY = 70


class Previews:
    def __init__(self, every_steps: int, size: int, family: str = "sd15", decoder=None):
        """every_steps 0: none. size: the preview's longer side in pixels. decoder: a loaded
        AutoencoderTiny, or None for the linear projection."""
        self.every_steps, self.size = every_steps, size
        weights, bias = LATENT_RGB["sdxl" if family == "sdxl" else "sd15"]
        self._weights = torch.tensor(weights)
        self._bias = torch.tensor(bias)
        self.decoder = decoder

    @classmethod
    def load(cls, every_steps: int, size: int, family: str, decoder_id: str, device, dtype
             ) -> "Previews":
        decoder = None
        if decoder_id and every_steps > 0:
            from diffusers import AutoencoderTiny

            decoder = AutoencoderTiny.from_pretrained(decoder_id, torch_dtype=dtype).to(device)
        return cls(every_steps, size, family, decoder)

    def due(self, step: int, total: int) -> bool:
        """Whether step (1-based) of total gets a preview: every every_steps steps, not the
        last (the finished image follows at once)."""
        return self.every_steps > 0 and step % self.every_steps == 0 and step < total

    def image(self, latents: torch.Tensor) -> Image.Image:
        """One image's latents (channels, height, width) as a small RGB image."""
        with torch.no_grad():
            if self.decoder is not None:
                grid = self._shrunk_for_decoder(latents[None].float())
                decoded = self.decoder.decode(grid.to(self.decoder.dtype)).sample[0]
                rgb = decoded.float().permute(1, 2, 0)
            else:
                grid = latents.float().permute(1, 2, 0)[..., :4]  # height, width, channels
                rgb = grid @ self._weights.to(grid.device) + self._bias.to(grid.device)
            pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        image = Image.fromarray(pixels, "RGB")
        scale = self.size / max(image.size)
        if scale != 1:
            image = image.resize((max(1, round(image.width * scale)),
                                  max(1, round(image.height * scale))),
                                 Image.Resampling.BILINEAR)
        return image

    def _shrunk_for_decoder(self, grid: torch.Tensor) -> torch.Tensor:
        """grid (1, channels, height, width), no larger than the decoder needs to draw a
        preview of self.size pixels."""
        config = self.decoder.config
        upscaling = config.upsampling_scaling_factor ** (len(config.decoder_block_out_channels)
                                                         - 1)
        longest = max(1, math.ceil(self.size / upscaling))
        height, width = grid.shape[-2:]
        if max(height, width) <= longest:
            return grid
        scale = longest / max(height, width)
        return F.interpolate(grid, size=(max(1, round(height * scale)),
                                         max(1, round(width * scale))),
                             mode="area")  # an average over each cell: no aliasing

    def data_uri(self, latents: torch.Tensor) -> str:
        buffer = io.BytesIO()
        self.image(latents).save(buffer, "JPEG", quality=JPEG_QUALITY)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
