"""`ImageDataset`: uint8 image tensors from an `ImageTable`, decoded with Pillow in loader workers.

Every item becomes a C × S × S uint8 tensor with the configured channel count (grayscale, RGBA, CMYK, palette
and 16-bit images are all converted) and, for file datasets, a fixed load size: the shorter side is resized to
``load_size`` and the centre square is kept, so batches stack and batched augmentation runs on the device.
In-memory datasets (Fashion-MNIST, digits) are indexed as whole batches without per-item Python work.

A missing or corrupt image raises an error naming its path, or, with ``on_bad_image="skip"``, is left out of its
batch and reported in the batch's ``"bad_paths"`` list so the trainer can count and log it.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .table import ImageTable

BAD_IMAGE_POLICIES = ("error", "skip")
PROBE_IMAGES = 64  # images whose header sizes are read to learn a file dataset's native size


class BadImageError(RuntimeError):
    """An image file that cannot be read; the message names the path."""


def decode_image(path: str, channels: int, load_size: int | None) -> torch.Tensor:
    """Decode ``path`` into a ``channels`` × S × S uint8 tensor (S = load_size, or the native size if None)."""
    try:
        with Image.open(path) as img:
            return image_to_tensor(img, channels, load_size)
    except FileNotFoundError as e:
        raise BadImageError(f"image not found: {path}") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise BadImageError(f"cannot decode image {path}: {e}") from e


def native_size(table: ImageTable, probe: int = PROBE_IMAGES) -> int | None:
    """The median shorter side of up to ``probe`` evenly spaced images of a file dataset (headers only, no
    decoding); the in-memory image size otherwise; None when no probed file can be opened."""
    if table.images is not None:
        return int(min(table.images.shape[-2:]))
    positions = np.unique(np.linspace(0, len(table.paths) - 1, num=min(probe, len(table.paths))).round().astype(int))
    sides = []
    for i in positions:
        try:
            with Image.open(table.paths[i]) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):
            continue
    return int(np.median(sides)) if sides else None


def resolve_load_size(table: ImageTable, requested: int | None, needed: int) -> int | None:
    """The decode size of a file dataset's images (None for in-memory data). ``requested`` None: the images' native
    size, capped at ``needed`` (what the augmentation crops or resizes to). A requested size far from the native
    one (more than 2 × above it, or below both a quarter of it and ``needed``) is used, with a warning naming both."""
    if table.paths is None:
        return None
    native = native_size(table)
    if requested is None:
        return needed if native is None else min(native, needed)
    if native is not None and (requested > 2 * native or (requested < native / 4 and requested < needed)):
        warnings.warn(
            f"data.load_size={requested} but the images of {table.name} ({table.root}) are about {native} px (median "
            f"shorter side): each image is {'up' if requested > native else 'down'}sampled to {requested} px before "
            f"the augmentation takes {needed} px from it; leave data.load_size unset (it then follows the images) or "
            f"set it near {min(native, needed)}",
            stacklevel=2,
        )
    return requested


def image_to_tensor(img: Image.Image, channels: int, load_size: int | None) -> torch.Tensor:
    """A PIL image → ``channels`` × S × S uint8 tensor (EXIF orientation applied, mode converted, centre square)."""
    img = ImageOps.exif_transpose(img)
    img = _to_mode(img, channels)
    if load_size is not None:
        img = _resize_centre_square(img, load_size)
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("L" if channels == 1 else "RGB")


def _resize_centre_square(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


class ImageDataset(torch.utils.data.Dataset):
    """Items ``indices`` of ``table``: ``{"image", "label", "index", "coarse_label"}`` (coarse −1 if undefined).

    Args:
        table: the dataset. indices: which items (default all), in table coordinates; ``index`` in the output is
            the table index. labels: optional override of the labels for these items (e.g. coarse labels under
            the superclass protocol). channels: 1 or 3. load_size: square size for file images (None: native).
        on_bad_image: ``error`` or ``skip``.
    """

    def __init__(
        self,
        table: ImageTable,
        indices=None,
        *,
        labels=None,
        channels: int | None = None,
        load_size: int | None = 256,
        on_bad_image: str = "error",
    ):
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.table = table
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices, dtype=np.int64)
        all_labels = table.labels if labels is None else np.asarray(labels, dtype=np.int64)
        if len(all_labels) != len(table):
            raise ValueError(f"labels override has {len(all_labels)} entries, the table {len(table)}")
        self.labels = all_labels[self.indices]
        coarse = table.coarse_labels
        self.coarse_labels = coarse[self.indices] if coarse is not None else np.full(len(self.indices), -1)
        native = table.images.shape[1] if table.images is not None else 3
        self.channels = channels or native
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        self.load_size = load_size
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.indices)

    def _in_memory(self, positions) -> torch.Tensor:
        images = self.table.images[torch.as_tensor(self.indices[positions])]
        if images.shape[1] == self.channels:
            return images
        if self.channels == 3:
            return images.expand(-1, 3, -1, -1).contiguous()
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)

    def __getitem__(self, position: int) -> dict:
        """One item (a bad file image raises `BadImageError` here whatever ``on_bad_image`` says)."""
        if self.table.images is not None:
            image = self._in_memory([position])[0]
        else:
            image = decode_image(self.table.paths[self.indices[position]], self.channels, self.load_size)
        return {
            "image": image,
            "label": int(self.labels[position]),
            "index": int(self.indices[position]),
            "coarse_label": int(self.coarse_labels[position]),
        }

    def __getitems__(self, positions: list[int]):
        """A whole batch at once: one tensor gather for in-memory data, per-file decoding otherwise."""
        positions = np.asarray(positions, dtype=np.int64)
        if self.table.images is not None:
            return {
                "image": self._in_memory(positions),
                "label": torch.from_numpy(self.labels[positions]),
                "index": torch.from_numpy(self.indices[positions]),
                "coarse_label": torch.from_numpy(self.coarse_labels[positions]),
                "bad_paths": [],
            }
        items, bad = [], []
        for p in positions:
            path = self.table.paths[self.indices[p]]
            try:
                image = decode_image(path, self.channels, self.load_size)
            except BadImageError as e:
                if self.on_bad_image == "error":
                    raise BadImageError(f"{e}; fix or remove the file, or set data.on_bad_image=skip to leave "
                                        "unreadable images out (they are counted in metrics.json)") from e  # fmt: skip
                bad.append(path)
                continue
            items.append((image, p))
        if not items:
            empty = torch.empty(0, dtype=torch.long)
            image = torch.empty(0, self.channels, 0, 0, dtype=torch.uint8)
            return {"image": image, "label": empty, "index": empty, "coarse_label": empty, "bad_paths": bad}
        kept = np.array([p for _, p in items])
        return {
            "image": _stack([img for img, _ in items]),
            "label": torch.from_numpy(self.labels[kept]),
            "index": torch.from_numpy(self.indices[kept]),
            "coarse_label": torch.from_numpy(self.coarse_labels[kept]),
            "bad_paths": bad,
        }


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack images; native-size images of different sizes are padded to the largest (load_size=None only)."""
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    if all(i.shape[1:] == (h, w) for i in images):
        return torch.stack(images)
    return torch.stack([F.pad(i, (0, w - i.shape[2], 0, h - i.shape[1])) for i in images])


def collate_batch(batch):
    """Collate for `ImageDataset` loaders: batches from ``__getitems__`` arrive ready; lists of items are stacked."""
    if isinstance(batch, dict):
        return batch
    return {
        "image": _stack([b["image"] for b in batch]),
        "label": torch.tensor([b["label"] for b in batch]),
        "index": torch.tensor([b["index"] for b in batch]),
        "coarse_label": torch.tensor([b["coarse_label"] for b in batch]),
        "bad_paths": [],
    }
