"""Data sets as uint8 tensors, decoded once and cached.

Every image set in purilib is an :class:`ImageSet`: ``images`` uint8
``[N, 3, H, W]`` (32x32 for CIFAR-10) and ``labels`` int64 ``[N]``.  Triggers
are applied to these uint8 images before any augmentation, as in the attacks' papers.

Registry: ``create_dataset(name, split, ...)`` with ``name`` in
``DATASETS`` ("cifar10", "synthetic", "image_folder").  CIFAR-10 is read from the data root
(see :mod:`purilib.settings`) in any of three forms, in this order:

1. torchvision's pickled ``cifar-10-batches-py`` folder;
2. an image-folder tree ``cifar10/{train,test}/<class>/*.jpg|png``, or a
   ``.tar.gz`` holding that tree (decoded once, then cached as ``.npz``);
3. ``download=True``: torchvision downloads the original (needs a network).

"image_folder" reads any data set in torchvision's ImageFolder layout
(``root/<split>/<class>/*.jpg``, e.g. ImageNet) at ``size`` x ``size``: see
:func:`load_image_folder`.
"""
import concurrent.futures
import hashlib
import os
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .devices import generator
from . import settings
from .settings import DataNotFoundError  # noqa: F401  (purilib.data.DataNotFoundError, as before)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    labels: torch.Tensor  # int64 [N]
    num_classes: int = 10

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        indices = torch.as_tensor(indices, dtype=torch.long)
        return ImageSet(self.images[indices], self.labels[indices], self.num_classes)

    def checksum(self) -> str:
        # the arrays' own memory (contiguous): no copy of a large data set
        digest = hashlib.sha256(np.ascontiguousarray(self.images.numpy()).data)
        digest.update(np.ascontiguousarray(self.labels.numpy()).data)
        return digest.hexdigest()[:16]


# ---------------------------------------------------------------- CIFAR-10
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles; rebuild numpy arrays and nothing else."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data batch")
        return super().find_class(module, name)


def _from_batches(folder: Path):
    def load(names):
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = _NumpyOnlyUnpickler(f, encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)
    train = load([f"data_batch_{i}" for i in range(1, 6)])
    test = load(["test_batch"])
    return {"train": train, "test": test}


def _decode(blob: bytes, size=None) -> np.ndarray:
    """An encoded image (JPEG, PNG, ...) as uint8 [3, H, W]; ``size``: resized and center-cropped to
    size x size first (:func:`_resize_center_crop`)."""
    from PIL import Image
    image = Image.open(io.BytesIO(blob)).convert("RGB")
    if size is not None:
        image = _resize_center_crop(image, size)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _resize_center_crop(image, size):
    """The standard ImageNet eval transform, scaled to ``size``: the shorter side resized (bilinear,
    antialiased) to round(size * 256 / 224), the longer in proportion, then the central size x size
    crop.  Computed as torchvision's ``Resize(256)`` + ``CenterCrop(224)`` on a PIL image, so the
    pixels are the ones a torchvision eval loader gives (before its float conversion)."""
    from PIL import Image
    short = round(size * 256 / 224)
    w, h = image.size
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    image = image.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _from_image_files(entries):
    """``entries``: iterable of (relative path 'cifar10/<split>/<class>/<file>', bytes)."""
    out = {"train": ([], []), "test": ([], [])}
    for path, read in entries:
        parts = Path(path).parts
        if len(parts) < 3 or parts[-3] not in out or parts[-2] not in CIFAR10_CLASSES:
            continue
        images, labels = out[parts[-3]]
        images.append((parts[-1], _decode(read())))
        labels.append(CIFAR10_CLASSES.index(parts[-2]))
    result = {}
    for split, (images, labels) in out.items():
        if not images:
            return None
        order = sorted(range(len(images)), key=lambda i: (labels[i], images[i][0]))
        result[split] = (np.stack([images[i][1] for i in order]),
                         np.asarray([labels[i] for i in order], dtype=np.int64))
    return result


def _from_tree(root: Path):
    files = sorted(p for p in root.glob("*/*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return _from_image_files((str(p.relative_to(root.parent)), p.read_bytes) for p in files)


def _from_tarball(path: Path):
    with tarfile.open(path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()
                   and m.name.lower().endswith((".jpg", ".jpeg", ".png"))]
        members.sort(key=lambda m: m.name)
        return _from_image_files((m.name, tar.extractfile(m).read) for m in members)


def _find_cifar10(root: Path, download: bool):
    if (root / "cifar-10-batches-py").is_dir():
        return "batches", root / "cifar-10-batches-py"
    for tree in (root / "cifar10", root):
        if (tree / "train").is_dir() and (tree / "test").is_dir():
            return "tree", tree
    tarballs = sorted(root.glob("*cifar*10*.tar.gz")) if root.is_dir() else []
    if tarballs:
        return "tarball", tarballs[0]
    if download:
        import torchvision
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        return "batches", root / "cifar-10-batches-py"
    raise DataNotFoundError(
        f"CIFAR-10 not found under data root '{root}'. Set PURILIB_DATA_ROOT (or --data-root, or data_root=) "
        "to a folder holding cifar-10-batches-py/, cifar10/{train,test}/<class>/*.jpg or a "
        "cifar10*.tar.gz of that tree; or pass download=True where a network is available.")


def load_cifar10(split: str, data_root=None, download=False, cache_dir=None, per_class=None) -> ImageSet:
    """CIFAR-10's ``split``; ``per_class``: only that many images of each class (a fixed,
    class-balanced subset: quick checks, not tables)."""
    root = settings.data_root(data_root)
    kind, path = _find_cifar10(root, download)
    stat = path.stat()
    tag = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    cached = settings.cache_dir(cache_dir) / "data" / f"cifar10-{kind}-{tag}.npz"
    if not cached.exists():
        try:
            arrays = {"batches": _from_batches, "tree": _from_tree, "tarball": _from_tarball}[kind](path)
        except (EOFError, OSError, tarfile.TarError, zlib.error, KeyError) as error:  # a refused pickle stays an error of its own
            raise DataNotFoundError(f"'{path}' could not be read as CIFAR-10 ({type(error).__name__}: {error}); "
                                    "is it truncated? Copy it again or point the data root elsewhere") from None
        if arrays is None:
            raise DataNotFoundError(f"'{path}' holds no cifar10/{{train,test}}/<class>/ images")
        _save_atomically(cached, lambda path: np.savez(
            path, **{f"{s}_{k}": arrays[s][i] for s in arrays for i, k in enumerate(("x", "y"))}))
    with np.load(cached) as arrays:
        images = ImageSet(torch.from_numpy(arrays[f"{split}_x"]), torch.from_numpy(arrays[f"{split}_y"]))
    return images if per_class is None else images.subset(class_balanced_split(images.labels, per_class, 0)[0])


def _save_atomically(cached: Path, save) -> None:
    """``save(path)`` to a file of this process's own, then renamed to ``cached``: processes decoding at
    once never share one, and an interrupted decode leaves no half file behind."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial{cached.suffix}")
    save(partial)
    partial.rename(cached)


# ---------------------------------------------------------------- synthetic
def load_synthetic(split: str, num_train=5000, num_test=1000, contrast=0.5, noise=0.2, seed=0, size=32,
                   **_) -> ImageSet:
    """Deterministic 10-class 32x32 images for the smoke profile and tests.

    Each class is a fixed smooth colour template (4x4 upsampled); samples add a
    random shift, a brightness change and smooth (8x8 upsampled) noise, so the
    images are smooth like natural ones and a tiny network learns them in
    seconds but not trivially.  No file is read.  ``size``: the same images
    upsampled (bilinear) to size x size: the smoke stand-in for ImageNet.
    """
    g = generator(seed)
    templates = 0.5 + contrast * (torch.rand(10, 3, 4, 4, generator=g, device=g.device) - 0.5)
    templates = torch.nn.functional.interpolate(templates, size=(40, 40), mode="bilinear", align_corners=False)
    n = num_train if split == "train" else num_test
    g = generator(seed + (1 if split == "train" else 2))
    labels = torch.arange(n, device="cpu") % 10
    labels = labels[torch.randperm(n, generator=g, device=g.device)]
    shifts = torch.randint(0, 9, (n, 2), generator=g, device=g.device)
    images = torch.stack([templates[c, :, dy:dy + 32, dx:dx + 32] for c, (dy, dx) in zip(labels.tolist(), shifts.tolist())])
    smooth_noise = torch.nn.functional.interpolate(torch.randn(n, 3, 8, 8, generator=g, device=g.device), size=(32, 32), mode="bilinear",
                                                   align_corners=False)
    images = 0.5 + (images - 0.5) * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g, device=g.device)) + noise * smooth_noise
    if size != 32:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(images, labels.long())


# ---------------------------------------------------------------- image folders (ImageNet)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def image_folder_classes(folder) -> list:
    """The class names of an ImageFolder split ``folder/<class>/...``: its sub-folders, sorted by
    name (torchvision's ImageFolder order; label i is the i-th name)."""
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def load_image_folder(split: str, root=None, size=224, per_class=None, data_root=None, cache_dir=None,
                      workers=None) -> ImageSet:
    """``root/<split>/<class>/*.jpg`` (torchvision's ImageFolder layout, any image size) as uint8
    [N, 3, size, size]: each image's shorter side resized to size * 256 / 224, then its central
    size x size crop (the standard ImageNet eval transform; 256 -> 224 at the default size).

    Labels follow the class folders sorted by name (:func:`image_folder_classes`), images within a
    class their sorted paths (sub-folders included).  ``per_class``: only the first k images of
    each class (fewer where a class has fewer): a 1% subset is read without decoding the rest.
    ``split`` "test" reads ``root/val`` when there is no ``root/test`` (ImageNet's layout).
    ``root`` defaults to the data root.  The files are decoded by ``workers`` threads (default: one per
    core; PIL decodes and resizes without the GIL) and the result is cached under the cache folder, keyed by
    every file's path, size and modification time and by ``size``: a later call (another table row,
    another worker, another run) reads the cached arrays instead of decoding again."""
    root = Path(root) if root is not None else settings.data_root(data_root)
    folder = root / split
    if split == "test" and not folder.is_dir() and (root / "val").is_dir():
        folder = root / "val"
    if not folder.is_dir():
        raise DataNotFoundError(f"no image folder '{folder}': expected {folder}/<class>/<image>.jpg "
                                "(torchvision's ImageFolder layout)")
    classes = image_folder_classes(folder)
    files, empty = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        files += [(path, label) for path in (found if per_class is None else found[:per_class])]
        empty += [] if found else [name]
    if not files:
        raise DataNotFoundError(f"image folder '{folder}' holds no images in class folders "
                                f"({folder}/<class>/<image>.jpg|png|...)")
    if empty:  # as ImageFolder: a stray folder would count as a class, shifting the labels after it
        raise DataNotFoundError(f"image folder '{folder}' has class folders without images: {', '.join(empty)}")
    labels = torch.tensor([label for _, label in files], dtype=torch.long, device="cpu")
    listing = hashlib.sha256(f"{folder.resolve()}|{size}|{len(classes)}".encode())
    for path, label in files:
        stat = path.stat()
        listing.update(f"{path.relative_to(folder)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    cached = settings.cache_dir(cache_dir) / "data" / f"image-folder-{listing.hexdigest()[:16]}.npy"
    if cached.exists():
        return ImageSet(torch.from_numpy(np.load(cached)), labels, num_classes=len(classes))
    images = torch.empty(len(files), 3, size, size, dtype=torch.uint8, device="cpu")  # filled in place: no copy
    array = images.numpy()  # the same memory

    def decode(i):
        path = files[i][0]
        try:
            array[i] = _decode(path.read_bytes(), size)
        except OSError as error:  # PIL's UnidentifiedImageError included
            raise DataNotFoundError(f"'{path}' could not be read as an image "
                                    f"({type(error).__name__}: {error})") from None
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(decode, range(len(files))))  # list(): the first error is raised here
    _save_atomically(cached, lambda path: np.save(path, array))
    return ImageSet(images, labels, num_classes=len(classes))


DATASETS = {"cifar10": load_cifar10, "synthetic": load_synthetic, "image_folder": load_image_folder}


def create_dataset(name: str, split: str, **kwargs) -> ImageSet:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of {sorted(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not '{split}'")
    return DATASETS[name](split, **kwargs)


# ---------------------------------------------------------------- splits
def class_balanced_split(labels: torch.Tensor, per_class: int, seed: int, num_classes=None):
    """Pick ``per_class`` indices of every class (seeded); return (picked, rest).  ``num_classes``: every
    class 0..num_classes-1 must be there (a class with none is an error, not left out)."""
    g = generator(seed)
    picked = []
    for c in (range(num_classes) if num_classes is not None else labels.unique().tolist()):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {per_class} asked for")
        picked.append(idx[torch.randperm(len(idx), generator=g, device=g.device)[:per_class]])
    picked = torch.cat(picked).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    mask[picked] = False
    return picked, mask.nonzero().flatten()


def defense_split(train: ImageSet, reserve_fraction=0.05, seed=0):
    """Split the training set once: (indices that train the backdoored model,
    indices of the reserved clean pool the defenses draw from).  Disjoint, fixed by seed."""
    per_class = int(round(len(train) * reserve_fraction / train.num_classes))
    reserved, attack_train = class_balanced_split(train.labels, per_class, seed)
    return attack_train, reserved


def clean_subset(train: ImageSet, pool: torch.Tensor, per_class: int, seed=0) -> ImageSet:
    """The defense's clean data: ``per_class`` images of each class from ``pool`` (indices of ``train``:
    the reserved pool, or :func:`clean_pool`'s) (``per_class=50`` is the papers' 1% of CIFAR-10; 1 is the
    one-shot setting)."""
    picked, _ = class_balanced_split(train.labels[pool], per_class, seed, num_classes=train.num_classes)
    return train.subset(pool[picked])


# Where a defense's clean images come from (a recorded setting, fixed per column by a table):
# "reserve": the held-out pool the model never saw (the sound protocol, and the default);
# "train": images the model was trained on, poisoned ones excluded (RNP's released code draws its clean
# data, and FIP's its Hessian batch, from the clean training split the backdoored model learned).
CLEAN_SOURCES = ("reserve", "train")


def clean_pool(source: str, labels: torch.Tensor, reserved: torch.Tensor, poison_idx: torch.Tensor,
               per_class=0) -> torch.Tensor:
    """Indices (of the full training split, whose ``labels`` are given) a defense's clean data are drawn from.
    "train": the images that trained the model (every index outside ``reserved``) minus ``poison_idx``; a
    class left with fewer than ``per_class`` (a clean-label attack such as SIG or CLB may poison every image
    of its target class) is topped up with the clean originals of its poisoned images, which the model saw
    triggered.  Attacks that poison batches while the model trains (WaNet, Input-aware Dynamic, LIRA,
    BppAttack) have no fixed poisoned images: for them every training image may have been seen with a
    trigger too."""
    if source == "reserve":
        return reserved
    if source != "train":
        raise ValueError(f"unknown clean source {source!r}; choose one of {CLEAN_SOURCES}")
    labels = labels.cpu()
    seen = torch.ones(len(labels), dtype=torch.bool, device="cpu")
    seen[reserved.cpu()] = False
    clean = seen.clone()
    clean[poison_idx.cpu()] = False
    for c in labels.unique().tolist():
        short = per_class - int((clean & (labels == c)).sum())
        if short > 0:  # the first poisoned ones of the class, in their clean form (fixed: no seed needed)
            clean[(seen & ~clean & (labels == c)).nonzero().flatten()[:short]] = True
    return clean.nonzero().flatten()
