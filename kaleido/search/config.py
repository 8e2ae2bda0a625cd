"""How a product index is built (``kaleido index build ... index.exact_threshold=...``)."""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("auto", "flat", "hnsw", "ivf")


@dataclass
class IndexConfig:
    """The FAISS index, and how products are embedded into it."""

    kind: str = "auto"           # auto (flat below exact_threshold, else `approximate`) | flat | hnsw | ivf
    exact_threshold: int = 50_000  # auto: exact inner product (IndexFlatIP) below this many products
    approximate: str = "hnsw"    # auto above the threshold: hnsw | ivf
    hnsw_m: int = 32             # HNSW neighbours per node (memory ~ 2 x m x 4 bytes per product)
    hnsw_ef_construction: int = 200  # HNSW build-time beam
    hnsw_ef_search: int = 128    # HNSW query-time beam (recall vs latency; stored, changeable at load)
    ivf_nlist: int = 0           # IVF cells (0 = 4 x sqrt(N))
    ivf_nprobe: int = 16         # IVF cells visited per query
    chunk_size: int = 4096       # products embedded per resumable chunk (INDEX/chunks/chunk-XXXXX.npz)
    batch_size: int = 128        # products / titles per forward pass
    titles: bool = True          # also embed every title (product-to-text search over the catalog's titles)
    device: str = "auto"         # where the dual encoder runs: auto | cpu | cuda
    threads: int = 0             # FAISS OpenMP threads (0 = FAISS's default)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, not {self.kind!r}")
        if self.approximate not in ("hnsw", "ivf"):
            raise ValueError(f"index approximate must be hnsw or ivf, not {self.approximate!r}")
        for name in ("chunk_size", "batch_size", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")

    def resolve_kind(self, n: int) -> str:
        """The index kind for ``n`` products."""
        if self.kind != "auto":
            return self.kind
        return "flat" if n < self.exact_threshold else self.approximate
