"""Product inspector: every stage of the pipeline for one product."""

import streamlit as st

from app.resources import session

demo = session()
st.title("Product inspector")
st.caption("The Kaleido pipeline for one product, computed live: saliency → kaleido patches → captioner attention "
           "→ token-patch alignments → alignment-guided masking → Kaleido-BERT matching.")
ids = [p.id for p in demo.catalog]
titles = {p.id: p.title for p in demo.catalog}
c1, c2 = st.columns([4, 1])
pid = c1.selectbox("Product", ids, format_func=lambda i: f"{i} · {titles[i]}", key="inspect_product")
seed = c2.number_input("Masking draw", min_value=0, max_value=999, value=0, step=1, key="seed")


@st.cache_data(show_spinner="Running the pipeline on this product ...", max_entries=32)
def inspect(pid: str, seed: int):
    product = demo.catalog[pid]
    return demo.inspector.inspect(demo.image_of(pid), product.title, demo.hard_negative(pid), seed=int(seed))


result = inspect(pid, seed)
st.subheader("1 · Saliency: where the product is")
st.image(result.saliency, caption=f"image · U2-Net-p mask · box {result.box}"
         + (" (no clear foreground: the whole image is used)" if result.saliency_fallback else ""))
st.subheader("2 · Kaleido patches: 1x1 to 5x5 grids on the box (55 patches)")
st.image(result.grids, width="stretch")
if result.attention is not None:
    st.subheader("3 · The captioner's attention, word by word")
    st.markdown(f"Caption: **{result.caption}**")
    st.image(result.attention, width="stretch")
    st.subheader("4 · Token-patch pre-alignments")
    if result.aligned_words:
        st.image(result.alignments, width="stretch")
        st.caption("Caption words found in the title, each tied to the patch of levels 3-5 its attention falls on: "
                   + ", ".join(f"{w} ({lv}x{lv} #{p}, {s:.2f})" for w, lv, p, s in result.aligned_words))
    else:
        st.info("No caption word matches a title word, so this product has no pre-alignments.")
if result.masking is not None:
    st.subheader("5 · One draw of alignment-guided masking")
    st.markdown(" ".join(f"<span style='background:#222;color:#fff;padding:1px 4px;border-radius:3px'>{t}</span>"
                         if m else t for t, m in result.masked_tokens), unsafe_allow_html=True)
    st.image(result.masking, caption="masked patches per level (a word and its aligned patch are never both hidden)")
if result.match is not None:
    st.subheader("6 · Does the title match the image?")
    own, neg = result.match["own"], result.match.get("negative")
    m1, m2 = st.columns(2)
    m1.metric("own title", f"{own[1]:+.2f}", help=own[0])
    m1.caption(own[0])
    if neg:
        m2.metric("hard negative (same subcategory)", f"{neg[1]:+.2f}", delta=f"{own[1] - neg[1]:+.2f} for the own title")
        m2.caption(neg[0])
    st.caption("Kaleido-BERT match log-odds. The released matcher was trained at this machine's CPU budget and is "
               "close to chance (see the model card): read these as a demonstration of the mechanism.")
    if result.why is not None:
        st.markdown("**Why this match:** where each title word looks (attention over the 5x5 patches)")
        st.image(result.why, width="stretch")
st.caption("seconds per stage: " + ", ".join(f"{k} {v}" for k, v in result.seconds.items()))
