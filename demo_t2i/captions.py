"""Captions of the miniature: templates over Fashion-MNIST's class names and their synonyms.

Every class has three names; every phrasing is a template filled with one of them. The training captions use
TRAIN_TEMPLATES; the held-out TEST_TEMPLATES (sentence shapes never seen in training, with the same names) are what
the samplers are prompted with and scored on.
"""
from __future__ import annotations

CLASS_NAMES = [
    ["t-shirt", "top", "tee"], ["trousers", "pants", "jeans"], ["pullover", "sweater", "jumper"],
    ["dress", "gown", "frock"], ["coat", "jacket", "parka"], ["sandal", "slipper", "flip-flop"],
    ["shirt", "blouse", "button-down"], ["sneaker", "trainer", "running shoe"], ["bag", "handbag", "purse"],
    ["ankle boot", "boot", "bootie"]]

TRAIN_TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}", "a {}", "a small {}",
                   "a grayscale photo of a {}", "this is a {}", "a {} on a plain background"]
TEST_TEMPLATES = ["a product shot of a {}", "look at this {}", "a low resolution image showing a {}"]


def phrasings(templates: list[str]) -> list[list[str]]:
    """Per class, every template filled with every name of the class (template-major)."""
    return [[t.format(name) for t in templates for name in names] for names in CLASS_NAMES]
