"""Write the image list of a CIFAR-10 visual subgroup: images of a class whose border is sky blue.

P1's CIFAR-10 subgroup definition is NOT FOUND (../shared/papers.md; its motivating example, "Boeing airplanes",
needs metadata CIFAR-10 lacks), so the project defines one from the pixels, reproducibly and without a model: an
image belongs to the subgroup when the per-channel median of its outer ``border``-pixel frame has
blue − red >= ``min_blue_minus_red`` (0-255 scale), i.e. the object is seen against a clear blue sky. For airplanes
and the default threshold 30 that is 39 % of the test images; the rest (grey or white sky, runways, ground) are the
siblings. The list names images of both splits as paths relative to the dataset root (the loader's ``image``
attribute; the file names are those of ``scripts/prepare_assets.py``'s CIFAR-10 JPEG archives) and is read by a
forget target as ``subgroup: {image: {file: forget/cifar10/<name>.txt}}``.

Usage: ``python scripts/cifar10_subgroup.py DATA_DIR/cifar10 conf/forget/cifar10/airplane_blue_sky.txt [--class airplane]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def border_blue_minus_red(path: Path, border: int) -> float:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    frame = np.concatenate([pixels[:border].reshape(-1, 3), pixels[-border:].reshape(-1, 3),
                            pixels[:, :border].reshape(-1, 3), pixels[:, -border:].reshape(-1, 3)])
    median = np.median(frame, axis=0)
    return float(median[2] - median[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="CIFAR-10 folder holding train/<class>/ and test/<class>/")
    parser.add_argument("output", type=Path)
    parser.add_argument("--class", dest="classname", default="airplane")
    parser.add_argument("--border", type=int, default=4, help="width in pixels of the frame that is read")
    parser.add_argument("--min-blue-minus-red", type=float, default=30.0)
    args = parser.parse_args()
    chosen, seen = [], 0
    for split in ("train", "test"):
        for path in sorted((args.root / split / args.classname).glob("*.jpg")):
            seen += 1
            if border_blue_minus_red(path, args.border) >= args.min_blue_minus_red:
                chosen.append(path.relative_to(args.root).as_posix())
    header = (f"# CIFAR-10 {args.classname} images against a blue sky: median of the outer {args.border}-px frame has "
              f"blue - red >= {args.min_blue_minus_red:g}\n# written by scripts/cifar10_subgroup.py "
              f"({len(chosen)} of {seen} images)\n")
    args.output.write_text(header + "\n".join(chosen) + "\n")
    print(f"{args.output}: {len(chosen)} of {seen} {args.classname} images")


if __name__ == "__main__":
    main()
