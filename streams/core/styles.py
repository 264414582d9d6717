"""The decor styles users pick from, each with the base prompt it starts from."""

DEFAULT_STYLES: dict[str, str] = {
    "minimalist": "a minimalist interior, clean lines, uncluttered open space, neutral palette, "
    "natural light, simple functional furniture",
    "cozy": "a cozy interior, warm soft lighting, plush textiles, layered throws and cushions, "
    "inviting warm tones",
    "bohemian": "a bohemian interior, eclectic patterns, rattan and macrame, lush plants, "
    "rich earthy colours, layered rugs",
    "modern": "a modern interior, sleek furniture, bold accents, polished surfaces, "
    "contemporary lighting",
    "rustic": "a rustic interior, reclaimed wood, exposed beams, natural stone, "
    "handcrafted furniture, warm earthy tones",
    "industrial": "an industrial interior, exposed brick, raw concrete, black metal fixtures, "
    "Edison bulbs, leather furniture",
    "scandinavian": "a scandinavian interior, light oak wood, white walls, soft wool textiles, "
    "functional minimal furniture, hygge",
}

DEFAULT_NEGATIVE_PROMPT = (
    "lowres, blurry, distorted, deformed furniture, watermark, text, people, bad anatomy"
)

# What the detector looks for in a room unless configured otherwise.
DEFAULT_DETECTION_LABELS: list[str] = [
    "sofa", "armchair", "chair", "coffee table", "dining table", "bed", "lamp", "rug",
    "cushion", "plant", "shelf", "cabinet", "mirror", "painting", "curtains", "vase",
]
