"""``kaleido tag``'s job under torchrun, for tests/test_tagging.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_tag.py CATALOG MODEL OUT [KILL]

With ``KILL`` = 1, rank 1 dies (``os._exit``, as ``kill -9`` would leave it) right after
writing its first part; the rerun without it must finish the job.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kaleido.data import CatalogConfig, load_catalog  # noqa: E402
from kaleido.tagging.job import TagJobConfig, run_tag_job  # noqa: E402


def main() -> None:
    catalog_dir, model, out = sys.argv[1:4]
    kill = len(sys.argv) > 4 and sys.argv[4] == "1"
    rank = int(os.environ.get("RANK", "0"))

    def on_part(k: int) -> None:
        if kill and rank == 1:
            os._exit(137)

    catalog = load_catalog(CatalogConfig(path=catalog_dir))
    run_tag_job(catalog, model, out, cfg=TagJobConfig(chunk=6), on_part=on_part)


if __name__ == "__main__":
    main()
