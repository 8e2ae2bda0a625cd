"""The catalog: products (id, text, categories, attributes, images) and how they were loaded.

Every source (product tables, Fashion-Gen HDF5) produces the same :class:`Catalog`.
Products carry metadata only; pixels are decoded on demand through the catalog's
image store, so a 40,000-product catalog costs megabytes, not gigabytes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from PIL import Image

from .images import ImageLoadError

log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The catalog itself is unusable (missing columns, duplicate ids, unreadable file)."""


@dataclass(frozen=True)
class Product:
    """One product of a catalog.

    Attributes:
        id: product id, unique in the catalog (always a string).
        title: the product title, the text side of every image-text task.
        description: optional longer text.
        category: the category of category recognition (CR), e.g. ``Topwear``.
        subcategory: the subcategory (SUB) and KB-101 negative pool, e.g. ``Shirts``.
        attributes: free-form tags such as colour, usage, season, gender.
        images: references into the catalog's image store (file paths or HDF5 rows),
            one per photo of the product, in catalog order.
    """

    id: str
    title: str
    images: tuple
    description: str = ""
    category: str = ""
    subcategory: str = ""
    attributes: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def text(self) -> str:
        """Title followed by the description, when there is one."""
        return f"{self.title}. {self.description}" if self.description else self.title


@dataclass
class LoadReport:
    """What happened while loading a catalog: counts of everything skipped, repaired or noted.

    Attributes:
        source: the file the catalog came from.
        rows: rows (tables) or images (HDF5) read.
        products: products kept.
        skipped: reason -> number of products (or rows) skipped for it.
        repaired: reason -> number of values repaired (e.g. non-UTF-8 lines decoded).
        noted: reason -> number of products kept as they are but worth a look (e.g. titles
            the tokenizer reads as ``[UNK]``).
        examples: reason -> the first few offending product ids / lines / paths.
        entries: every item skipped, repaired or noted, in order, as
            ``{"kind", "reason", "item"}``: nothing is dropped without being named here.
    """

    source: str
    rows: int = 0
    products: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    noted: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    entries: list = field(default_factory=list)

    def skip(self, reason: str, example: str, warn: bool = True) -> None:
        """Count one skipped item and keep the first few examples."""
        self.skipped[reason] += 1
        self._example("skipped", reason, example)
        if warn and self.skipped[reason] <= 5:
            log.warning("%s: skipped %s (%s)", self.source, example, reason)

    def repair(self, reason: str, example: str) -> None:
        """Count one repaired value."""
        self.repaired[reason] += 1
        self._example("repaired", reason, example)

    def note(self, reason: str, example: str) -> None:
        """Count one item kept as it is but worth a look."""
        self.noted[reason] += 1
        self._example("noted", reason, example)

    def _example(self, kind: str, reason: str, example: str) -> None:
        self.entries.append({"kind": kind, "reason": reason, "item": example})
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(example)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.source}: {self.rows:,} rows -> {self.products:,} products"]
        for kind, counts in (("skipped", self.skipped), ("repaired", self.repaired),
                             ("noted", self.noted)):
            for reason, n in sorted(counts.items()):
                lines.append(f"  {kind} {n:,} ({reason}), e.g. {', '.join(self.examples[reason][:3])}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "rows": self.rows,
            "products": self.products,
            "skipped": dict(self.skipped),
            "repaired": dict(self.repaired),
            "noted": dict(self.noted),
            "examples": self.examples,
            "entries": self.entries,
        }


class ImageStore(Protocol):
    """Decodes the image behind an image reference of a product."""

    def load(self, ref, min_side: int | None = None) -> Image.Image:
        """Return the RGB image for ``ref``; raise :class:`ImageLoadError` when unreadable.

        ``min_side``: the image may be decoded smaller, by an integer factor, as long as both
        sides stay at least this long (see :func:`~kaleido.data.images.decode_image`)."""

    def exists(self, ref) -> bool:
        """Whether ``ref`` points at something that exists (a file on disk, an HDF5 row)."""

    def describe(self, ref) -> str:
        """Name ``ref`` for messages (a path, or file + row)."""


@dataclass
class Catalog:
    """An ordered collection of products plus the store that decodes their images.

    Attributes:
        products: the products, in source order.
        store: decodes ``product.images`` references.
        report: what loading skipped or repaired.
        name: a short name for messages and run folders.
    """

    products: list[Product]
    store: ImageStore
    report: LoadReport
    name: str = "catalog"
    _index: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {p.id: i for i, p in enumerate(self.products)}
        if len(self._index) != len(self.products):
            where: dict[str, list[int]] = {}
            for position, p in enumerate(self.products, start=1):
                where.setdefault(p.id, []).append(position)
            dupes = [(pid, pos) for pid, pos in where.items() if len(pos) > 1]
            examples = ", ".join(f"{pid!r} (products {', '.join(map(str, pos))})" for pid, pos in dupes[:5])
            raise CatalogError(
                f"{self.report.source}: {len(dupes)} duplicate product ids, e.g. {examples}"
            )

    def __len__(self) -> int:
        return len(self.products)

    def __iter__(self) -> Iterator[Product]:
        return iter(self.products)

    def __getitem__(self, product_id: str) -> Product:
        try:
            return self.products[self._index[str(product_id)]]
        except KeyError:
            raise KeyError(f"product id {product_id!r} is not in {self.name}") from None

    def __contains__(self, product_id: object) -> bool:
        return str(product_id) in self._index

    def subset(self, ids) -> "Catalog":
        """The products with the given ids, in catalog order (same store)."""
        wanted = {str(i) for i in ids}
        missing = wanted - self._index.keys()
        if missing:
            raise KeyError(f"{len(missing)} ids not in {self.name}, e.g. {sorted(missing)[:5]}")
        kept = [p for p in self.products if p.id in wanted]
        report = LoadReport(source=self.report.source, rows=len(kept), products=len(kept))
        return Catalog(kept, self.store, report, name=self.name)

    def load_image(self, product: Product, index: int = 0, *, min_side: int | None = None) -> Image.Image:
        """Decode one image of a product (raises :class:`ImageLoadError`).

        Args:
            product: the product.
            index: which of its images.
            min_side: decode big images smaller, keeping both sides at least this long
                (the original size is in ``image.info["original_size"]``).
        """
        ref = product.images[index]
        return self.store.load(ref) if min_side is None else self.store.load(ref, min_side=min_side)

    def iter_images(
        self, products=None, *, report: LoadReport | None = None, all_views: bool = False
    ) -> Iterator[tuple[Product, int, Image.Image]]:
        """Yield ``(product, view_index, image)``, reporting and skipping unreadable images.

        Args:
            products: products to visit (default: all).
            report: where to count failures (default: a fresh report, logged at the end).
            all_views: every image of each product; otherwise only the first.
        """
        own_report = report is None
        report = report or LoadReport(source=self.report.source)
        for product in self.products if products is None else products:
            views = range(len(product.images)) if all_views else range(min(1, len(product.images)))
            for view in views:
                ref = product.images[view]
                try:
                    image = self.store.load(ref)
                except ImageLoadError as err:
                    report.skip("unreadable image", f"{product.id} ({err})")
                    continue
                yield product, view, image
        if own_report and report.skipped:
            log.warning(report.summary())
