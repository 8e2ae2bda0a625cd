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
    """What happened while loading a catalog: counts of everything skipped or repaired.

    Attributes:
        source: the file the catalog came from.
        rows: rows (tables) or images (HDF5) read.
        products: products kept.
        skipped: reason -> number of products skipped for it.
        repaired: reason -> number of values repaired (e.g. non-UTF-8 strings decoded).
        examples: reason -> a few offending product ids / paths, for the user to look at.
    """

    source: str
    rows: int = 0
    products: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def skip(self, reason: str, example: str, warn: bool = True) -> None:
        """Count one skipped item and keep the first few examples."""
        self.skipped[reason] += 1
        self._example(reason, example)
        if warn and self.skipped[reason] <= 5:
            log.warning("%s: skipped %s (%s)", self.source, example, reason)

    def repair(self, reason: str, example: str) -> None:
        """Count one repaired value."""
        self.repaired[reason] += 1
        self._example(reason, example)

    def _example(self, reason: str, example: str) -> None:
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(example)

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.source}: {self.rows:,} rows -> {self.products:,} products"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n:,} ({reason}), e.g. {', '.join(self.examples[reason][:3])}")
        for reason, n in sorted(self.repaired.items()):
            lines.append(f"  repaired {n:,} ({reason}), e.g. {', '.join(self.examples[reason][:3])}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "rows": self.rows,
            "products": self.products,
            "skipped": dict(self.skipped),
            "repaired": dict(self.repaired),
            "examples": self.examples,
        }


class ImageStore(Protocol):
    """Decodes the image behind an image reference of a product."""

    def load(self, ref) -> Image.Image:
        """Return the RGB image for ``ref``; raise :class:`ImageLoadError` when unreadable."""

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
            dupes = [pid for pid, n in Counter(p.id for p in self.products).items() if n > 1]
            raise CatalogError(
                f"{self.report.source}: {len(dupes)} duplicate product ids, e.g. {dupes[:5]}"
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

    def load_image(self, product: Product, index: int = 0) -> Image.Image:
        """Decode one image of a product (raises :class:`ImageLoadError`)."""
        return self.store.load(product.images[index])

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
