"""GEM-VLA's --image_aug written without torchvision/imgaug: colour jitter, corruption, and how often each applies."""

import numpy as np
from PIL import Image

from gem_stages.augment import add_noise, adjust_hue, augment, color_jitter, jpeg, motion_kernel


def solid(rgb, size=(16, 12)) -> Image.Image:
    return Image.new("RGB", size, tuple(rgb))


def test_hue_shift_of_a_third_turn_makes_red_green_and_green_blue():
    assert np.asarray(adjust_hue(solid((255, 0, 0)), 1 / 3))[0, 0].tolist() == [0, 255, 0]
    assert np.asarray(adjust_hue(solid((0, 255, 0)), 1 / 3))[0, 0].tolist() == [0, 0, 255]
    # negative shifts wrap around 256 steps (torchvision's uint8 overflow): red 0 - 85 -> 171, one step past blue
    # (170): sector 171 / 255 * 6 = 4.0235 -> (255 * 0.0235, 0, 255) = (6, 0, 255)
    assert np.asarray(adjust_hue(solid((255, 0, 0)), -1 / 3))[0, 0].tolist() == [6, 0, 255]


def test_color_jitter_on_grey_is_a_brightness_factor_in_0_7_to_1_3():
    # grey has no saturation or hue and a uniform image no contrast: only brightness acts, 128 * U(0.7, 1.3)
    values = [np.asarray(color_jitter(solid((128, 128, 128), (4, 4)), np.random.default_rng(s))) for s in range(1000)]
    firsts = np.array([v[0, 0, 0] for v in values], dtype=float)
    assert all((v == v[0, 0, 0]).all() for v in values)  # still a uniform grey
    assert 89 <= firsts.min() < 95 and 161 < firsts.max() <= 167  # 128 * 0.7 = 89.6, 128 * 1.3 = 166.4
    assert abs(firsts.mean() - 128) < 3  # 4 standard errors of 1000 draws (sd 22.2)


def test_half_of_the_images_are_augmented():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    untouched = sum(augment(image, np.random.default_rng(s)) is image for s in range(2000))
    assert 900 < untouched < 1100  # P = 0.5: 1000 +- 4.5 sigma


def test_noise_is_shared_by_the_channels_half_of_the_time_and_small():
    grey = solid((128, 128, 128), (32, 32))
    outs = [np.asarray(add_noise(grey, np.random.default_rng(s)), dtype=int) for s in range(400)]
    shared = sum(bool((o == o[..., :1]).all()) for o in outs)
    assert 160 < shared < 240  # per_channel=0.5
    # scale <= 0.02 * 255 = 5.1: Gaussian std <= 5.1, Laplace std <= 7.2, Poisson mean <= 5.1
    assert max(np.abs(o - 128).mean() for o in outs) < 8


def test_motion_kernel_is_a_normalised_line_and_jpeg_keeps_the_size():
    k = motion_kernel(5, 0.0)
    assert np.allclose(k[2], 0.2) and k.sum() == 1.0 and (k[[0, 1, 3, 4]] == 0).all()
    assert np.allclose(motion_kernel(7, 90.0)[:, 3], 1 / 7)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    out = jpeg(image, np.random.default_rng(0))
    assert out.size == (30, 20) and out.mode == "RGB" and np.asarray(out).tolist() != np.asarray(image).tolist()
