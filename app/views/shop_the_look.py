"""Shop the look: a photo (uploaded or from the catalog) -> what it is, a caption, similar products."""

import streamlit as st

from app.components import product_grid, tags_table
from app.resources import session
from kaleido.demo.uploads import UploadError, read_image_upload

demo = session()
st.title("Shop the look")
source = st.radio("Photo", ["Pick a catalog product", "Upload a photo"], horizontal=True, key="source")
image, query = None, None
if source == "Upload a photo":
    upload = st.file_uploader("A product photo (JPEG, PNG or WebP, up to 20 MB)", type=["jpg", "jpeg", "png", "webp"],
                              key="upload")
    if upload is not None:
        try:
            image = read_image_upload(upload.getvalue(), upload.name)
        except UploadError as err:
            st.error(f"That file cannot be used: {err}")
            st.stop()
        query = image
else:
    ids = [p.id for p in demo.catalog]
    titles = {p.id: p.title for p in demo.catalog}
    pid = st.selectbox("Product", ids, format_func=lambda i: f"{i} · {titles[i]}", key="product")
    image, query = demo.image_of(pid), pid
if image is None:
    st.info("Upload a photo or pick a product to see what the model makes of it.")
    st.stop()

left, right = st.columns([1, 2])
with left:
    st.image(image, caption="your photo" if source == "Upload a photo" else titles[query], width="stretch")
with right:
    with st.spinner("Looking at the photo ..."):
        tags = demo.describe(image)
    st.subheader("What it is")
    st.markdown(f"*Caption:* **{tags.caption or '(no captioner)'}**")
    tags_table(tags)
st.subheader("Similar products")
with st.spinner("Finding similar products ..."):
    hits = demo.similar(query, k=8)
product_grid(hits, cols=4)
