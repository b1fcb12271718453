"""GEM-VLA's image augmentation (`--image_aug`, train/dataset.py and train/image_corrupt.py) on PIL and numpy.

The release uses torchvision's ColorJitter and an imgaug pipeline; gemctl has neither, so both are written here from
their definitions, every draw from one numpy Generator (seeded per sample by the trainer):

  augment       with probability 0.5 the image is left alone; otherwise colour only, corruption only or both,
                equally likely (colour first).
  color_jitter  brightness, contrast, saturation factors uniform in [1 - x, 1 + x] (0.3, 0.4, 0.5) and a hue shift
                uniform in [-0.03, 0.03] of a turn, applied in a random order (torchvision's ColorJitter on a PIL
                image: ImageEnhance for the first three, a shift of the HSV hue channel for the last).
  corrupt       in a random order: one additive noise (Gaussian or Laplace with scale uniform in [0, 0.02 * 255],
                or Poisson with lambda in that range and a random sign), each per channel with probability 0.5;
                with probability 0.168 one blur (Gaussian sigma in [0, 1.5], average or median with kernel 3..5,
                or motion blur with kernel 5..9 at a random angle; the first three together as likely as motion
                blur); with probability 0.168 JPEG compression of strength 0..50 (quality 100 - strength).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

AUG_PROB = 0.5  # fraction of images augmented
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.3, 0.4, 0.5, 0.03
NOISE_SCALE = 0.02 * 255
BLUR_PROB = JPEG_PROB = 0.168
MAX_JPEG_COMPRESSION = 50


def augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() <= AUG_PROB:  # the release augments when random() > 0.5
        return image
    kind = rng.integers(3)  # 0 corruption only, 1 colour only, 2 both
    if kind != 0:
        image = color_jitter(image, rng)
    if kind != 1:
        image = corrupt(image, rng)
    return image


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]) in PIL's 8-bit HSV, as torchvision does on PIL images
    (the shift truncated to whole steps of 1/255, the channel wrapping around)."""
    h, s, v = image.convert("HSV").split()
    h = Image.fromarray(((np.asarray(h, dtype=np.int16) + int(shift * 255)) % 256).astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def color_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    factors = {
        "brightness": rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS),
        "contrast": rng.uniform(1 - CONTRAST, 1 + CONTRAST),
        "saturation": rng.uniform(1 - SATURATION, 1 + SATURATION),
        "hue": rng.uniform(-HUE, HUE),
    }
    enhancers = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                 "saturation": ImageEnhance.Color}
    for name in rng.permutation(list(factors)):
        if name == "hue":
            image = adjust_hue(image, factors[name])
        else:
            image = enhancers[name](image).enhance(factors[name])
    return image


def add_noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(image, dtype=np.float32)
    shape = x.shape if rng.random() < 0.5 else (*x.shape[:2], 1)  # per channel, or one value for all channels
    kind, scale = rng.integers(3), rng.uniform(0.0, NOISE_SCALE)
    if kind == 0:
        noise = rng.normal(0.0, scale, shape)
    elif kind == 1:
        noise = rng.laplace(0.0, scale, shape)
    else:
        noise = rng.poisson(scale, shape) * rng.choice([-1.0, 1.0], shape)
    return Image.fromarray(np.clip(np.round(x + noise), 0, 255).astype(np.uint8))


def motion_kernel(size: int, angle_deg: float) -> np.ndarray:
    """A normalised line of `size` pixels through the kernel's centre at `angle_deg`."""
    k = np.zeros((size, size), dtype=np.float64)
    c = (size - 1) / 2
    t = np.linspace(-c, c, 4 * size)
    rad = np.deg2rad(angle_deg)
    rows = np.clip(np.round(c - t * np.sin(rad)).astype(int), 0, size - 1)
    cols = np.clip(np.round(c + t * np.cos(rad)).astype(int), 0, size - 1)
    k[rows, cols] = 1.0
    return k / k.sum()


def convolve(image: Image.Image, kernel: np.ndarray) -> Image.Image:
    """`image` filtered with `kernel` (odd or even side), edges replicated."""
    x = np.asarray(image, dtype=np.float64)
    kh, kw = kernel.shape
    padded = np.pad(x, ((kh // 2, (kh - 1) // 2), (kw // 2, (kw - 1) // 2), (0, 0)), mode="edge")
    out = np.zeros_like(x)
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j]:
                out += kernel[i, j] * padded[i : i + x.shape[0], j : j + x.shape[1]]
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.5:
        size = int(rng.integers(5, 10))
        return convolve(image, motion_kernel(size, rng.uniform(0.0, 360.0)))
    kind = rng.integers(3)
    if kind == 0:
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5)))
    size = int(rng.integers(3, 6))
    if kind == 1:
        return convolve(image, np.full((size, size), 1.0 / size**2))
    return image.filter(ImageFilter.MedianFilter(size | 1))  # a median needs an odd window


def jpeg(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    quality = int(round(100 - rng.uniform(0, MAX_JPEG_COMPRESSION)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as out:
        return out.convert("RGB")


def corrupt(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    steps = [add_noise, blur, jpeg]
    use = [True, rng.random() < BLUR_PROB, rng.random() < JPEG_PROB]
    for k in rng.permutation(3):
        if use[k]:
            image = steps[k](image, rng)
    return image
