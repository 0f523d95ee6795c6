"""Extract the offline image archives of ``../shared/assets`` into the folder layouts the loaders read.

This is how tests, the README demo and benchmarks get real images on machines that cannot download
datasets. Each archive is unpacked once; a marker file holding the archive's size and mtime makes
repeated calls free.

Layout written under ``DATA_DIR`` (what ``paths.data_dir`` points at)::

    cifar10/{train,test}/<class>/*.jpg          ImageFolder form of CIFAR-10
    imagenet1k/val/<wnid>/<file>.JPEG            ImageFolder form of the one-image-per-class sample
    pacs/<domain>/<class>/<file>                 PACS subset (style dataset)
    tiny-imagenet-200/{wnids.txt,words.txt,val/,train/}   Tiny-ImageNet in its release layout

Usage: ``python scripts/prepare_assets.py [DATA_DIR] [--assets DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

DEFAULT_ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"

# archive name -> (folder it lands in under DATA_DIR, top-level entry inside the archive to move there)
ARCHIVES = {
    "cifar10_test_jpg.tar.gz": ("cifar10", None),
    "cifar10_train_jpg.tar.gz": ("cifar10", None),
    "imagenet_sample_1000_short256.tar.gz": ("imagenet1k", "imagenet_sample_1000"),
    "pacs_50_per_class_domain.tar.gz": ("pacs", "PACS_50"),
    "tiny_imagenet_val.tar.gz": ("tiny-imagenet-200", "tiny-imagenet-200"),
    "tiny_imagenet_train_100.tar.gz": ("tiny-imagenet-200", "tiny-imagenet-200"),
}


def _marker(dest: Path, archive: Path) -> Path:
    return dest / f".extracted-{archive.name}"


def _stamp(archive: Path) -> str:
    st = archive.stat()
    return f"{st.st_size}:{int(st.st_mtime)}"


def _imagenet_sample_to_folders(flat: Path, dest: Path) -> None:
    """``<wnid>_<name>.JPEG`` files -> ``val/<wnid>/<wnid>_<name>.JPEG`` (ImageFolder, torchvision class order)."""
    for image in flat.glob("*.JPEG"):
        wnid = image.name.split("_", 1)[0]
        (dest / "val" / wnid).mkdir(parents=True, exist_ok=True)
        shutil.move(str(image), dest / "val" / wnid / image.name)


def extract(data_dir: Path, assets_dir: Path = DEFAULT_ASSETS) -> Path:
    data_dir = Path(data_dir)
    if not assets_dir.is_dir():
        raise FileNotFoundError(
            f"asset folder {assets_dir} not found: it holds the offline image archives (see ../shared/assets/README.md); "
            "pass --assets DIR"
        )
    for name, (folder, inner) in ARCHIVES.items():
        archive = assets_dir / name
        if not archive.is_file():
            raise FileNotFoundError(f"missing archive {archive}; expected archives: {sorted(ARCHIVES)}")
        dest = data_dir / folder
        marker = _marker(dest, archive)
        if marker.is_file() and marker.read_text() == _stamp(archive):
            continue
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            source = Path(tmp) / inner if inner else Path(tmp)
            if name.startswith("imagenet"):
                _imagenet_sample_to_folders(source, dest)
            else:
                # merge into dest (train and val archives of one dataset share a folder)
                for root, _dirs, files in os.walk(source):
                    target = dest / Path(root).relative_to(source)
                    target.mkdir(parents=True, exist_ok=True)
                    for f in files:
                        os.replace(Path(root) / f, target / f)
        marker.write_text(_stamp(archive))
    return data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", nargs="?", default="data", help="where to extract (paths.data_dir); default: ./data")
    parser.add_argument("--assets", type=Path, default=DEFAULT_ASSETS, help=f"archive folder (default {DEFAULT_ASSETS})")
    args = parser.parse_args()
    print(extract(Path(args.data_dir), args.assets).resolve())


if __name__ == "__main__":
    main()
