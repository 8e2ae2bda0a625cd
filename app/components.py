"""Small display pieces the pages share (no model logic)."""

from __future__ import annotations

import streamlit as st


def product_grid(hits, cols: int = 4, show_rerank: bool = False) -> None:
    """Product cards: image, title, category, score (and the re-ranker's score)."""
    if not hits:
        st.info("No products match these filters.")
        return
    rows = [hits[i:i + cols] for i in range(0, len(hits), cols)]
    for row in rows:
        columns = st.columns(cols)
        for col, hit in zip(columns, row):
            with col.container(border=True):
                if hit.image:
                    st.image(hit.image, width="stretch")
                st.markdown(f"**{hit.rank}. {hit.title}**")
                colour = hit.attributes.get("baseColour", "") if hit.attributes else ""
                gender = hit.attributes.get("gender", "") if hit.attributes else ""
                st.caption(" · ".join(x for x in (hit.subcategory, colour, gender) if x))
                line = f"match {hit.score:.3f}"
                if show_rerank and hit.rerank_score is not None:
                    line += f" · Kaleido-BERT {hit.rerank_score:+.2f}"
                st.caption(line)


def tags_table(tags) -> None:
    """A product's predicted fields with their top classes and probabilities."""
    import pandas as pd

    rows = []
    for field, t in tags.fields.items():
        rows.append({"field": field, "prediction": t.label, "probability": round(t.prob, 3),
                     "runner-up": ", ".join(f"{n} {p:.2f}" for n, p in t.top[1:]),
                     "confidence": "low" if t.low_confidence else "ok"})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
