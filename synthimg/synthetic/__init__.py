"""The synthetic arm: class-targeted captions (LLM or templates) and text-to-image generation."""
