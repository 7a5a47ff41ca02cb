"""Glyphs: characters rendered in the machine's fonts, a class-rich zero-shot dataset built offline.

Each class is one character (Unicode code point); each image is that character rendered in one installed font
face, white on black, its ink bounding box cropped, scaled to fit ``size - 2 × margin`` pixels (aspect kept) and
centred in a ``size × size`` square. A face counts for a character only when its cmap maps the code point (so no
``.notdef`` "tofu" boxes) and only when it covers at least 80% of that script's basic alphabet (so stray Greek
capitals in a Latin font, or a few Latin letters in a Greek font, do not count). Blank renders and renders
identical to an earlier face's in the same class are dropped, then classes with fewer than ``min_images`` faces.

Characters (``charset()``, 370): digits, ASCII letters, the Latin-1 and Latin Extended-A letters, Greek (with
tonos and dialytika) and Cyrillic (Russian, Ukrainian, Belarusian, Serbian, Macedonian) letters, less the
homoglyphs: Greek and Cyrillic letters drawn like a Latin (or Greek) letter in most fonts (Greek Α, Cyrillic а,
Cyrillic Г = Greek Γ, …) and Latin Đ (= Ð), which would be classes made of the same images.

Faces: the TrueType / OpenType files (``.ttf .otf .ttc .otc``; a variable font gives its default instance)
under ``font_dirs`` (default ``/usr/share/fonts`` and ``/usr/local/share/fonts``), in the order of their file
name and face index, so the same installed fonts give byte-identical data. A family (typographic family name)
gives at most ``styles_per_family`` faces (default 4: those nearest regular, bold, italic and bold italic at
normal width), so a family shipped in 18 weights does not dominate; a few faces that draw something else at
letter code points (dingbats, symbols, key caps) or capitals at lowercase code points are left out
(``EXCLUDED_FAMILIES``). The fonts are Debian's ``FONT_PACKAGES``: ``make glyph-fonts`` installs them.

Split (``split_of``): class-disjoint, zero-shot over characters: a hash of the code point puts each character in
``train`` or ``test`` (about half each), whatever fonts are installed; the fonts are shared by both. Coarse labels:
the base letter (first character of the NFD decomposition: é, è and e share ``e``). ``extra``: per-image
``font`` (family and style), ``font_family``, ``script`` (Latin, Greek, Cyrillic, Digit) and ``codepoint``; and
``build``, counts of what was found and dropped.

Cache: rendered once (a progress bar; a pool of worker processes, results independent of their number) into a
compressed ``glyphs-<size>px-<key>.npz`` (and a readable ``.json`` of the build's counts) in ``root`` or
``$XDG_CACHE_HOME/deepmetric/glyphs``, keyed by a hash of the characters, the size, the font files' names and
sizes, the options, Pillow's version and ``CODE_VERSION``; written atomically. ``min_images`` applies on loading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..registry import DATASETS
from .table import ImageTable

# Debian (bookworm) packages whose faces make the dataset (`make glyph-fonts` installs them with
# --no-install-recommends: about 51 MB, 12 s with a fast mirror). Chosen for many distinct designs, most covering
# Latin, Greek and Cyrillic; the script, handwriting and display faces mostly cover Latin only.
FONT_PACKAGES: tuple[str, ...] = (
    # serif and sans text faces (Latin, Greek, Cyrillic unless noted)
    "fonts-dejavu-core",
    "fonts-urw-base35",
    "fonts-cmu",
    "fonts-freefont-ttf",
    "fonts-croscore",
    "fonts-go",
    "fonts-sil-gentiumplus",
    "fonts-open-sans",
    "fonts-roboto-unhinted",
    "fonts-roboto-slab",
    "fonts-vollkorn",
    "fonts-lato",
    "fonts-oldstandard",
    "fonts-linuxlibertine",
    "fonts-ebgaramond",
    "fonts-tuffy",
    "fonts-cantarell",
    "fonts-crosextra-carlito",
    "fonts-clear-sans",
    "fonts-manrope",
    "fonts-georgewilliams",
    "fonts-paratype",  # Latin, Cyrillic
    # monospace
    "fonts-hack",
    "fonts-jetbrains-mono",
    "fonts-firacode",
    "fonts-mononoki",
    "fonts-anonymous-pro",
    "fonts-fantasque-sans",
    "fonts-noto-mono",
    "fonts-3270",
    # display (Latin, Greek, Cyrillic)
    "fonts-comfortaa",
    "fonts-jura",
    "fonts-play",
    "fonts-eurofurence",
    # display and handwriting (Latin, Cyrillic)
    "fonts-yanone-kaffeesatz",
    "fonts-triod-postnaja",
    # script and handwriting (Latin)
    "fonts-comic-neue",
    "fonts-dancingscript",
    "fonts-kaushanscript",
    "fonts-breip",
    "fonts-dkg-handwriting",
    "fonts-lobstertwo",
    # display and blackletter (Latin)
    "fonts-cabinsketch",
    "fonts-averia-gwf",
    "fonts-gotico-antiqua",
)

CODE_VERSION = 1  # bump when the rendering or the selection changes: it is part of the cache key
SYSTEM_FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")
MARGIN_FRACTION = 1 / 16  # blank border on each side: 2 px of 32
INK = 16  # pixel value above which a rendered pixel counts as ink (for the bounding box and the blank test)
SCRIPT_COVERAGE = 0.8  # share of a script's basic alphabet a face must map to count for that script
MIN_CLASSES = 4
# Hashed with each code point to split the classes; of 200 salts tried, the one giving the most even halves of
# every script (train / test: Latin 120 / 121, Greek 28 / 24, Cyrillic 34 / 33, digits 5 / 5).
SPLIT_SALT = "deepmetric-glyphs 105"

# Letters that most fonts draw exactly like a letter kept in the charset (identical in at least half of the fonts
# having both, in a build over 686 faces): left out of the default charset, so no two classes share their images.
HOMOGLYPHS = frozenset(
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧοΪΫ"  # Greek = Latin A B E Z H I K M N O P T Y X o Ï Ÿ
    "АВЕМНОРСТХаеорсух"  # Cyrillic = Latin
    "ЅѕІіЈјЀѐЁёЇї"  # Cyrillic = Latin S s I i J j È è Ë ë Ï ï
    "ГП"  # Cyrillic = Greek Γ Π
    "Đ"  # Latin D with stroke = Ð (eth)
)
# Basic alphabets: a face counts for a script's characters only if it maps SCRIPT_COVERAGE of these.
SCRIPT_ALPHABETS = {
    "Latin": [*range(0x41, 0x5B), *range(0x61, 0x7B)],
    "Greek": [c for c in range(0x391, 0x3CA) if c != 0x3A2],
    "Cyrillic": list(range(0x410, 0x450)),
}
# Families (as named in the font) that draw something else at letter code points: left out by name.
EXCLUDED_FAMILIES = {
    "D050000L": "dingbats at letter code points",
    "Standard Symbols PS": "Adobe Symbol encoding: Greek letters at Latin code points",
    "Linux Biolinum Keyboard O": "letters drawn inside key-cap frames",
    "Linux Libertine Initials O": "decorated initials",
    "Go Smallcaps": "small capitals at lowercase code points",
    "unifur": "unicase: lowercase forms at capital code points",
}

log = logging.getLogger(__name__)


def charset() -> list[int]:
    """The default characters, as sorted code points."""
    cps = [*range(0x30, 0x3A), *range(0x41, 0x5B), *range(0x61, 0x7B)]
    cps += [c for c in range(0xC0, 0x100) if c not in (0xD7, 0xF7)]  # Latin-1 letters (not × ÷)
    cps += range(0x100, 0x180)  # Latin Extended-A
    cps += [0x386, *range(0x388, 0x38B), 0x38C, *range(0x38E, 0x3A2), *range(0x3A3, 0x3CF)]  # Greek letters
    cps += [*range(0x400, 0x460), 0x490, 0x491]  # Cyrillic, and Ґ ґ
    return sorted(c for c in set(cps) if chr(c) not in HOMOGLYPHS)


def script_of(cp: int) -> str:
    """``Digit``, ``Latin``, ``Greek``, ``Cyrillic``, or the first word of the character's Unicode name."""
    name = unicodedata.name(chr(cp), "UNKNOWN")
    if unicodedata.category(chr(cp)) == "Nd":
        return "Digit"
    return name.split()[0].capitalize()


def base_letter(cp: int) -> str:
    """First character of the NFD decomposition: ``é`` → ``e``, ``ά`` → ``α``, ``ø`` → ``ø``."""
    return unicodedata.normalize("NFD", chr(cp))[0]


def class_name(cp: int) -> str:
    """``"é LATIN SMALL LETTER E WITH ACUTE"``."""
    return f"{chr(cp)} {unicodedata.name(chr(cp), f'U+{cp:04X}')}"


def split_of(cp: int) -> str:
    """``train`` or ``test``: a hash of the code point, so the split never depends on the installed fonts."""
    return "train" if hashlib.sha256(f"{SPLIT_SALT} U+{cp:04X}".encode()).digest()[0] & 1 else "test"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deepmetric" / "glyphs"


def install_hint() -> str:
    return (
        "Install the fonts with `make glyph-fonts`, or as root: "
        f"`apt-get install -y --no-install-recommends {' '.join(FONT_PACKAGES)}`; or pass font_dirs=[folder, ...]."
    )


def find_font_files(font_dirs: Iterable[str | os.PathLike] | None = None) -> list[Path]:
    """The font files under ``font_dirs`` (default ``SYSTEM_FONT_DIRS``), one per real file, sorted by file name
    then path."""
    found = {}
    for folder in font_dirs if font_dirs is not None else SYSTEM_FONT_DIRS:
        for dirpath, _, files in os.walk(folder, followlinks=True):
            for name in files:
                if name.lower().endswith(FONT_SUFFIXES):
                    real = os.path.realpath(os.path.join(dirpath, name))
                    if os.path.isfile(real):
                        found.setdefault(real, Path(real))
    return sorted(found.values(), key=lambda p: (p.name, str(p)))


def _face_count(path: Path) -> int:
    """Faces in a font file: the TrueType/OpenType collection header, else 1."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) == 12 and head[:4] == b"ttcf":
        return min(struct.unpack(">I", head[8:12])[0], 1024)  # a damaged header must not make millions of tasks
    return 1


def _face_info(task) -> dict | None:
    """Names, style and the covered code points of one face (``None`` when fontTools cannot read it)."""
    path, index, cps = task
    from fontTools.ttLib import TTFont

    logging.getLogger("fontTools").setLevel(logging.ERROR)
    try:
        with TTFont(path, fontNumber=index, lazy=True) as font:
            cmap = font.getBestCmap() or {}
            names = font["name"]
            family = (names.getDebugName(16) or names.getDebugName(1) or Path(path).stem).strip()
            style = (names.getDebugName(17) or names.getDebugName(2) or "Regular").strip()
            os2 = font.get("OS/2")
            weight = int(os2.usWeightClass) if os2 is not None else 400
            weight = weight * 100 if 1 <= weight <= 9 else weight  # some old fonts use 1–9
            width = int(os2.usWidthClass) if os2 is not None else 5
            italic = bool(os2 is not None and os2.fsSelection & 1) or bool(font["head"].macStyle & 2)
            italic = italic or any(w in style.lower() for w in ("italic", "oblique", "slanted", "kursiv"))
            # a code point mapped to glyph 0 is mapped to .notdef: the tofu box
            mapped = {cp for cp, glyph in cmap.items() if glyph != ".notdef" and font.getGlyphID(glyph) != 0}
    except Exception as e:  # fontTools raises many kinds on damaged or exotic files
        log.debug("skipping %s#%d: %s", path, index, e)
        return None
    alphabets = SCRIPT_ALPHABETS.items()
    supported = {s for s, letters in alphabets if sum(c in mapped for c in letters) >= SCRIPT_COVERAGE * len(letters)}
    return {
        "path": str(path),
        "index": index,
        "family": family,
        "style": style,
        "weight": weight,
        "width": width,
        "italic": italic,
        "covered": [cp for cp in cps if cp in mapped and _script_supported(script_of(cp), supported)],
    }


def _script_supported(script: str, supported: set[str]) -> bool:
    """Digits count in a face that supports any script; the gated scripts only where supported; others always."""
    if script == "Digit":
        return bool(supported)
    return script in supported or script not in SCRIPT_ALPHABETS


def select_styles(faces: Sequence[dict], per_family: int | None) -> list[dict]:
    """At most ``per_family`` faces of each family: the ones nearest regular, bold, italic, bold italic (in that
    order) at normal width; bold is weight 600 or more. Keeps the order of ``faces``."""
    if per_family is None:
        return list(faces)
    families: dict[str, list[int]] = {}
    for i, face in enumerate(faces):
        families.setdefault(" ".join(face["family"].casefold().split()), []).append(i)
    keep = set()
    for members in families.values():
        for italic, bold in ((False, False), (False, True), (True, False), (True, True))[:per_family]:
            slot = [i for i in members if faces[i]["italic"] == italic and (faces[i]["weight"] >= 600) == bold]
            if slot:
                target = 700 if bold else 400
                keep.add(min(slot, key=lambda i: (abs(faces[i]["width"] - 5), abs(faces[i]["weight"] - target), i)))
    return [face for i, face in enumerate(faces) if i in keep]


def render_glyph(font, char: str, size: int) -> np.ndarray | None:
    """``char`` in the Pillow ``font``: a ``size × size`` uint8 array, white on black, the ink cropped, scaled to
    fit with a margin (aspect kept) and centred; ``None`` when the glyph has no ink."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(char)
    pad = max(4, int(font.size) // 4)  # room for ink outside the advertised box
    canvas = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), char, font=font, fill=255)
    pixels = np.asarray(canvas)
    ink = pixels > INK
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if not len(rows):
        return None
    glyph = pixels[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = glyph.shape
    box = size - 2 * max(1, round(size * MARGIN_FRACTION))
    scale = box / max(height, width)
    new_w, new_h = max(1, min(box, round(width * scale))), max(1, min(box, round(height * scale)))
    small = np.asarray(Image.fromarray(glyph).resize((new_w, new_h), Image.Resampling.LANCZOS))
    out = np.zeros((size, size), dtype=np.uint8)
    y, x = (size - new_h) // 2, (size - new_w) // 2
    out[y : y + new_h, x : x + new_w] = small
    return out if out.max() > INK else None


def _render_face(task) -> list[tuple[int, bytes]]:
    """``[(code point, size × size image bytes)]`` for the covered code points of one face that have ink."""
    path, index, cps, size = task
    from PIL import ImageFont

    try:
        font = ImageFont.truetype(path, _render_px(size), index=index, layout_engine=ImageFont.Layout.BASIC)
    except OSError as e:
        log.debug("cannot open %s#%d: %s", path, index, e)
        return []
    out = []
    for cp in cps:
        try:
            image = render_glyph(font, chr(cp), size)
        except (OSError, ValueError) as e:  # a broken glyph
            log.debug("cannot render U+%04X in %s#%d: %s", cp, path, index, e)
            continue
        if image is not None:
            out.append((cp, image.tobytes()))
    return out


def _render_px(size: int) -> int:
    """The em size FreeType renders at, before the glyph is scaled down to ``size``."""
    return max(48, 3 * size)


def _run(fn, tasks: list, workers: int, progress: bool, desc: str, chunksize: int = 1) -> list:
    """``[fn(task) for task in tasks]``, in order, over a pool of ``workers`` processes (ordered, so the result
    never depends on the number of workers), with a tqdm bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), desc=desc, unit="face", disable=not progress or None) as bar:
        if workers <= 1 or len(tasks) <= 1:
            out = []
            for task in tasks:
                out.append(fn(task))
                bar.update()
            return out
        import multiprocessing

        # fork starts in milliseconds; spawn would re-import torch in each worker
        context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
        with context.Pool(min(workers, len(tasks))) as pool:
            out = []
            for result in pool.imap(fn, tasks, chunksize=chunksize):
                out.append(result)
                bar.update()
            return out


def _default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def build(
    cps: Sequence[int],
    size: int,
    files: Sequence[Path],
    *,
    max_fonts: int | None = None,
    styles_per_family: int | None = 4,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Render ``cps`` in the faces of ``files``: the arrays the cache stores (all classes, before ``min_images``).

    Keys: ``images`` (N × size × size uint8, by code point then face), ``codepoints`` (N,), ``face`` (N, index into
    the ``face_*`` arrays), ``face_family``, ``face_style``, ``face_file``, ``face_index`` (F,), ``meta`` (JSON).
    """
    workers = _default_workers() if workers is None else workers
    cps = sorted(set(cps))
    tasks = []
    for path in files:
        try:
            count = _face_count(path)
        except OSError:
            continue
        tasks += [(str(path), index, cps) for index in range(count)]
    infos = [f for f in _run(_face_info, tasks, workers, False, "reading fonts", chunksize=8) if f is not None]
    excluded = sorted({f["family"] for f in infos if f["family"] in EXCLUDED_FAMILIES})
    covering = [f for f in infos if f["family"] not in EXCLUDED_FAMILIES and f["covered"]]
    faces = select_styles(covering, styles_per_family)
    if max_fonts is not None and len(faces) > max_fonts:  # a hash of the file name: stable as fonts come and go
        ranked = sorted(range(len(faces)), key=lambda i: _digest(f"{Path(faces[i]['path']).name}#{faces[i]['index']}"))
        faces = [faces[i] for i in sorted(ranked[:max_fonts])]
    stats = {
        "font_files": len(files),
        "faces_found": len(tasks),
        "faces_unreadable": len(tasks) - len(infos),
        "faces_excluded": len([f for f in infos if f["family"] in EXCLUDED_FAMILIES]),
        "excluded_families": excluded,
        "faces_covering_characters": len(covering),
        "faces_used": len(faces),
    }
    if not faces:
        return {**_empty(size), "meta": np.array(json.dumps(stats))}

    rendered = _run(_render_face, [(f["path"], f["index"], f["covered"], size) for f in faces], workers, progress,
                    "rendering glyphs")  # fmt: skip
    per_class: dict[int, list[tuple[int, bytes]]] = {cp: [] for cp in cps}
    seen: dict[int, set[bytes]] = {cp: set() for cp in cps}
    blank = duplicate = 0
    for face_id, (face, glyphs) in enumerate(zip(faces, rendered, strict=True)):
        blank += len(face["covered"]) - len(glyphs)
        for cp, data in glyphs:
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if digest in seen[cp]:  # another face draws the identical bitmap
                duplicate += 1
                continue
            seen[cp].add(digest)
            per_class[cp].append((face_id, data))
    items = [(cp, face_id, data) for cp in cps for face_id, data in per_class[cp]]
    stats.update(glyphs_mapped=sum(len(f["covered"]) for f in faces), blank_dropped=blank,
                 duplicates_dropped=duplicate, images=len(items))  # fmt: skip
    return {
        "images": np.frombuffer(b"".join(d for _, _, d in items), dtype=np.uint8).reshape(len(items), size, size),
        "codepoints": np.array([cp for cp, _, _ in items], dtype=np.int32),
        "face": np.array([face_id for _, face_id, _ in items], dtype=np.int32),
        "face_family": np.array([f["family"] for f in faces], dtype=str),
        "face_style": np.array([f["style"] for f in faces], dtype=str),
        "face_file": np.array([Path(f["path"]).name for f in faces], dtype=str),
        "face_index": np.array([f["index"] for f in faces], dtype=np.int32),
        "meta": np.array(json.dumps(stats)),
    }


def _empty(size: int) -> dict:
    return {
        "images": np.zeros((0, size, size), dtype=np.uint8),
        "codepoints": np.zeros(0, dtype=np.int32),
        "face": np.zeros(0, dtype=np.int32),
        "face_family": np.zeros(0, dtype=str),
        "face_style": np.zeros(0, dtype=str),
        "face_file": np.zeros(0, dtype=str),
        "face_index": np.zeros(0, dtype=np.int32),
    }


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_key(cps, size, files, max_fonts, styles_per_family) -> str:
    import PIL

    spec = {
        "version": CODE_VERSION,
        "pillow": PIL.__version__,
        "chars": list(cps),
        "size": size,
        "max_fonts": max_fonts,
        "styles_per_family": styles_per_family,
        "fonts": [[p.name, p.stat().st_size] for p in files],
    }
    return _digest(json.dumps(spec, sort_keys=True))[:16]


def _save(path: Path, data: dict) -> None:
    """Write the arrays to ``path`` (compressed .npz) and the build counts beside it (.json), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem, suffix=".tmp", delete=False) as tmp:
        try:
            np.savez_compressed(tmp, **data)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it 0600
    os.replace(tmp.name, path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
        tmp.write(json.dumps(json.loads(str(data["meta"])), indent=1) + "\n")
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path.with_suffix(".json"))


def _read(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _optional_int(value) -> int | None:
    return None if value is None or str(value).lower() in ("", "none", "null") else int(value)


def _code_points(chars) -> list[int]:
    return sorted({c if isinstance(c, int) else ord(c) for c in chars})


@DATASETS.register("glyphs")
def load(
    root=None,
    *,
    size: int = 32,
    min_images: int = 20,
    max_fonts: int | None = None,
    font_dirs: Iterable[str | os.PathLike] | None = None,
    chars: str | Iterable[str | int] | None = None,
    styles_per_family: int | None = 4,
    workers: int | None = None,
    progress: bool = True,
) -> ImageTable:
    """The glyph dataset as an in-memory table, rendered on first use and cached (see the module docstring).

    Args:
        root: cache folder (default ``$XDG_CACHE_HOME/deepmetric/glyphs``). size: image side in pixels.
        min_images: drop characters drawn by fewer faces. max_fonts: use at most this many faces (chosen by a hash
        of their file names). font_dirs: folders searched for font files (default ``SYSTEM_FONT_DIRS``).
        chars: the characters (a string or code points; default ``charset()``). styles_per_family: faces kept
        per font family (``None``: all). workers: rendering processes (default: the CPUs, at most 8).
        progress: show a progress bar while rendering.
    """
    size, min_images = int(size), int(min_images)  # options may come from the command line as strings
    max_fonts, styles_per_family = _optional_int(max_fonts), _optional_int(styles_per_family)
    workers = _optional_int(workers)
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    if isinstance(font_dirs, str | os.PathLike):
        font_dirs = [font_dirs]
    cps = charset() if chars is None else _code_points(chars)
    if not cps:
        raise ValueError("chars is empty")
    dirs = [str(d) for d in font_dirs] if font_dirs is not None else list(SYSTEM_FONT_DIRS)
    files = find_font_files(dirs)
    if not files:
        raise FileNotFoundError(f"no font files ({' '.join(FONT_SUFFIXES)}) found in {dirs}. {install_hint()}")
    path = (
        Path(root or cache_dir()).expanduser()
        / f"glyphs-{size}px-{_cache_key(cps, size, files, max_fonts, styles_per_family)}.npz"
    )
    data = None
    if path.is_file():
        try:
            data = _read(path)
        except (OSError, ValueError, KeyError) as e:  # a damaged cache file: render again
            log.warning("ignoring unreadable glyph cache %s: %s", path, e)
    if data is None:
        data = build(cps, size, files, max_fonts=max_fonts, styles_per_family=styles_per_family, workers=workers,
                     progress=progress)  # fmt: skip
        if len(data["images"]):
            _save(path, data)
    return _table(data, cps, min_images, path, dirs)


def _table(data: dict, cps: Sequence[int], min_images: int, path: Path, dirs: list[str]) -> ImageTable:
    stats = json.loads(str(data["meta"]))
    if not stats.get("faces_used"):
        raise FileNotFoundError(
            f"no font face in {dirs} draws the characters ({stats['faces_found']} faces found, "
            f"{stats['faces_unreadable']} unreadable, {stats['faces_excluded']} excluded). {install_hint()}"
        )
    codepoints = data["codepoints"].astype(np.int64)
    counts = dict(zip(*np.unique(codepoints, return_counts=True), strict=True))
    kept = np.array([cp for cp in cps if counts.get(cp, 0) >= min_images], dtype=np.int64)
    if len(kept) < MIN_CLASSES:
        few = sum(1 for cp in cps if 0 < counts.get(cp, 0) < min_images)
        raise ValueError(
            f"only {len(kept)} glyph classes have at least min_images={min_images} images (need {MIN_CLASSES}): "
            f"{stats['faces_found']} font faces found in {dirs}, {stats['faces_used']} used; of {len(cps)} "
            f"characters {few} are drawn by fewer than {min_images} faces and {len(cps) - len(kept) - few} by none "
            f"(a face counts only when its cmap maps the character and it covers the script's alphabet; blank and "
            f"duplicate renders do not count). {install_hint()} Or lower min_images."
        )
    keep = np.isin(codepoints, kept)
    codepoints, face = codepoints[keep], data["face"][keep].astype(np.int64)
    labels = np.searchsorted(kept, codepoints)
    bases = sorted({base_letter(int(cp)) for cp in kept}, key=ord)
    coarse_of = {b: i for i, b in enumerate(bases)}
    class_coarse = np.array([coarse_of[base_letter(int(cp))] for cp in kept], dtype=np.int64)
    class_split = np.array([split_of(int(cp)) for cp in kept], dtype=object)
    class_script = np.array([script_of(int(cp)) for cp in kept], dtype=object)
    font_names = np.array([f"{fam} {sty}" for fam, sty in zip(data["face_family"], data["face_style"], strict=True)],
                          dtype=object)  # fmt: skip
    return ImageTable(
        name="glyphs",
        labels=labels,
        split=class_split[labels],
        images=torch.from_numpy(np.ascontiguousarray(data["images"][keep])).unsqueeze(1),
        coarse_labels=class_coarse[labels],
        class_names={i: class_name(int(cp)) for i, cp in enumerate(kept)},
        coarse_names=dict(enumerate(bases)),
        root=str(path),
        extra={
            "font": font_names[face],
            "font_family": data["face_family"].astype(object)[face],
            "script": class_script[labels],
            "codepoint": codepoints,
            "build": {**stats, "classes_kept": len(kept), "min_images": min_images},
        },
    )
