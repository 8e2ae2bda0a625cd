"""Search: a text box, filters, and the re-ranking's effect side by side."""

import streamlit as st

from app.components import product_grid
from app.resources import session

demo = session()
st.title("Search the catalog")
st.caption(f"{len(demo.catalog)} products · dual encoder + FAISS index"
           + (" · Kaleido-BERT re-ranking available" if demo.can_rerank else ""))

query = st.text_input("What are you looking for?", placeholder="red dress, men's running shoes, leather wallet ...",
                      key="query")
options = demo.filter_options()
c1, c2, c3, c4 = st.columns([2, 2, 2, 2])
category = c1.selectbox("Category", ["any"] + options["category"], key="category")
gender = c2.selectbox("Gender", ["any"] + options["gender"], key="gender")
colour = c3.selectbox("Colour", ["any"] + options["baseColour"], key="colour")
compare = c4.toggle("Compare with re-ranking", value=False, disabled=not demo.can_rerank, key="compare",
                    help="Kaleido-BERT re-scores the dual encoder's top 20 (slower; the released matcher is "
                         "a CPU-budget model, see the model card)")

problem = demo.check_query(query)
if problem:
    st.info(problem)
    st.stop()
filters = {"category": None if category == "any" else category, "gender": None if gender == "any" else gender,
           "baseColour": None if colour == "any" else colour}
unknown = demo.unknown_words(query)
if unknown:
    words = " or ".join(repr(w) for w in unknown)
    nothing_known = len(unknown) == len(demo.query_words(query))
    st.warning(f"No product mentions {words}: " + ("these are only the nearest guesses." if nothing_known else
                                                   "the results rest on the other words."))
with st.spinner("Searching ..."):
    hits = demo.search(query, k=12, filters=filters)
if compare:
    left, right = st.columns(2)
    with left:
        st.subheader("Dual encoder")
        product_grid(hits, cols=2)
    with right:
        st.subheader("Re-ranked by Kaleido-BERT (top 20)")
        with st.spinner("Re-ranking ..."):
            reranked = demo.search(query, k=12, filters=filters, rerank=20)
        product_grid(reranked, cols=2, show_rerank=True)
else:
    product_grid(hits, cols=4)
