"""The label_depth stage's bookkeeping over a million-image tree: what every `gemctl train` of a recipe that names a
depth_model pays at render (the plan: list the tree, stat each image for its digest), and what the stage pays
before and after labelling (images changed since labelled, labels of removed images). No image is decoded: the
files are empty, as only names and stats are read.

Baseline, measured in the same run on the same tree: the walk as the stage first did it (Path.rglob and is_file(),
a stat per file; Path objects for each stat).

    python bench/bench_depth_plan.py [--images 1000000] [--root DIR]

The tree goes under /dev/shm when there is one (a million inodes), else the temporary folder; --root puts it
elsewhere (a network file system is where it matters most).
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate(images: Path, labels: Path, count: int) -> None:
    """count empty .jpg files, 1,000 per folder, and a label for each in labels/depth (as after a labelling run)."""
    (labels / "depth").mkdir(parents=True)
    for k in range(count):
        if k % 1000 == 0:
            folder = images / f"{k // 1000:04d}"
            folder.mkdir(parents=True)
        open(folder / f"img{k:07d}.jpg", "wb").close()
        open(labels / "depth" / f"img{k:07d}.png", "wb").close()


def baseline_walk(images: Path) -> list[str]:
    """The first implementation's walk (stages/label_depth.list_images before it used os.scandir)."""
    from gem_stages.label_depth import IMAGE_SUFFIXES, STATE_DIR

    return sorted(str(p.relative_to(images)) for p in images.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and STATE_DIR not in p.parts)


def baseline_digest(folder: Path, files: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for rel in files:
        st = (folder / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, default=None)
    args = parser.parse_args()

    from gem_stages.label_depth import drop_stale, list_images, prune
    from gemctl.depth_stage import stat_digest

    base = args.root or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="bench-depth-plan-", dir=base))
    try:
        images, labels = work / "images", work / "labels"
        _, made = timed(generate, images, labels, args.images)
        print(f"{args.images:,} images and labels written in {made:.1f} s under {work}")

        old, old_walk = timed(baseline_walk, images)
        _, old_digest = timed(baseline_digest, images, old)
        files, walk = timed(list_images, images)
        digest, new_digest = timed(stat_digest, images, files)
        assert files == old and digest == baseline_digest(images, files)  # the same plan, faster
        stale, stale_s = timed(drop_stale, images, files, labels)
        removed, prune_s = timed(prune, files, labels)
        assert stale == 0 and removed == 0

        rows = [("walk (list_images)", old_walk, walk), ("stat digest", old_digest, new_digest),
                ("plan at render (walk + digest)", old_walk + old_digest, walk + new_digest)]
        print(f"\n{'':34} {'baseline':>10} {'now':>10} {'ratio':>7}")
        for name, before, now in rows:
            print(f"{name:34} {before:9.1f}s {now:9.1f}s {before / now:6.1f}x")
        print(f"{'changed since labelled (drop_stale)':34} {'':>10} {stale_s:9.1f}s")
        print(f"{'labels of removed images (prune)':34} {'':>10} {prune_s:9.1f}s")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
              f"(the baseline's Path objects included); load average {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
