"""A small dataset of one's own in GEM format, as a new user brings it: JPEG images, depth for some of them only,
stored the way depth tools write it (x.png for image x.jpg) or under the image's exact name, and a second set with
no depth at all."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from gem_stages.data.config import AnnotationSet
from gem_stages.data.depth_png import save_depth_mm

W, H = 40, 32
STEM_PNG, EXACT, NONE = "stem.png", "exact", "none"  # where an image's depth is stored
# the "scenes" set: 12 images, 7 with depth as <stem>.png, 2 under the image's own name, 3 without depth
SCENE_DEPTH = [STEM_PNG] * 7 + [EXACT] * 2 + [NONE] * 3


def depth_value(i: int) -> float:
    """The constant depth (metres) of image i of the scenes set."""
    return 0.5 + i / 10


def _image(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, format="JPEG")


def _sample(name: str, i: int, image: str) -> dict:
    return {"id": f"{name}{i}", "image": image,
            "conversations": [{"from": "human", "value": f"<image>\nhow far is object {i}?"},
                              {"from": "gpt", "value": f"about {depth_value(i):.1f} meters"}]}


def make_own_sets(root: Path) -> tuple[AnnotationSet, AnnotationSet]:
    """(scenes: depth for 9 of its 12 images, captions: 6 images and no depth_root)."""
    scenes, captions = root / "scenes", root / "captions"
    (scenes / "images").mkdir(parents=True)
    (scenes / "depth_root" / "depth").mkdir(parents=True)
    (captions / "images").mkdir(parents=True)
    lines = []
    for i, where in enumerate(SCENE_DEPTH):
        _image(scenes / "images" / f"{i:03d}.jpg", i)
        if where != NONE:
            name = f"{i:03d}.png" if where == STEM_PNG else f"{i:03d}.jpg"  # exact name: PNG data, .jpg name
            save_depth_mm(scenes / "depth_root" / "depth" / name, np.full((H, W), depth_value(i), np.float32))
        lines.append(_sample("scene", i, f"images/{i:03d}.jpg"))
    (scenes / "train.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    lines = []
    for i in range(6):
        _image(captions / "images" / f"c{i}.jpg", 100 + i)
        lines.append(_sample("caption", i, f"images/c{i}.jpg"))
    (captions / "train.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    return (AnnotationSet(name="scenes", annotations=str(scenes / "train.jsonl"),
                          depth_root=str(scenes / "depth_root")),
            AnnotationSet(name="captions", annotations=str(captions / "train.jsonl")))
