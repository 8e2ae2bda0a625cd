"""Catalog tagging: a product table (+ images) in, the tagged table out, likely catalog errors first."""

import hashlib
from pathlib import Path

import pandas as pd
import streamlit as st

from app.resources import run_dir, session, tag_folders
from kaleido.demo.uploads import UploadError, unpack_once

demo = session()
st.title("Catalog tagging")
st.caption("Every product gets category, subcategory, colour, gender, usage, season and a caption, with calibrated "
           "probabilities; rows where a confident prediction contradicts the catalog come first.")
source = st.radio("Catalog", ["A folder on the server", "Upload a table and a zip of images"], horizontal=True,
                  key="tag_source")
folder = None
if source == "A folder on the server":
    folders = tag_folders()
    name = st.selectbox("Folder", list(folders), key="tag_folder")
    folder = folders[name]
else:
    table = st.file_uploader("Product table (CSV, Parquet or JSONL: id, title and an image column)",
                             type=["csv", "parquet", "jsonl"], key="tag_table")
    images = st.file_uploader("Images (a zip; paths as in the table's image column)", type=["zip"], key="tag_zip")
    if table is not None:
        data, archive = table.getvalue(), images.getvalue() if images is not None else None
        try:
            folder = str(unpack_once(data, archive, Path(run_dir()) / "uploads", table.name))
        except UploadError as err:
            st.error(f"That upload cannot be used: {err}")
            st.stop()
if folder is None:
    st.info("Pick a folder or upload a table to tag.")
    st.stop()

from kaleido.data import load_catalog  # noqa: E402
from kaleido.tagging.job import TagJobConfig, format_summary, run_tag_job  # noqa: E402

try:
    catalog = load_catalog(folder)
except (ValueError, FileNotFoundError) as err:
    st.error(f"{folder} cannot be read as a catalog: {err}")
    st.stop()
inputs = st.selectbox("Inputs", ["auto", "image", "image+title"], key="tag_inputs",
                      help="auto: image + title where the product has a title; image: ignore the titles "
                           "(for catalogs whose titles are not trustworthy)")
st.write(f"{len(catalog)} products in {folder}.")
if st.button("Tag the catalog", type="primary", key="tag_run"):
    # one job folder per catalog state (path, table file, inputs); features cached per catalog, except
    # the demo's own catalog, whose features `make demo` already made
    table_files = sorted(p for p in Path(folder).glob("products.*") if p.is_file())
    stamp = "|".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in table_files)
    out = Path(run_dir()) / "tag-jobs" / hashlib.sha1(f"{Path(folder).resolve()}|{stamp}|{inputs}".encode()).hexdigest()[:12]
    same = Path(folder).resolve() == Path(demo.state.catalog).resolve()
    cache = Path(run_dir()) / "tag-features" if same else out / "features"
    cfg = TagJobConfig(inputs=inputs, chunk=16, csv=True)
    n_parts = -(-len(catalog) // cfg.chunk)
    bar = st.progress(0.0, text="tagging ...")
    done = []

    def on_part(k):
        done.append(k)
        bar.progress(min(1.0, len(done) / n_parts), text=f"tagging: {min(len(catalog), len(done) * cfg.chunk)} of "
                                                        f"{len(catalog)} products")

    try:
        summary = run_tag_job(catalog, demo.model / "tagger", out, cache=cache, cfg=cfg, on_part=on_part,
                              tagger=demo.tagger)
    except (ValueError, RuntimeError) as err:
        st.error(f"Tagging stopped: {err}")
        st.stop()
    bar.progress(1.0, text="done")
    st.session_state["tag_result"] = (str(out), summary, folder)

if "tag_result" in st.session_state:
    out, summary, tagged_folder = st.session_state["tag_result"]
    tagged = catalog if tagged_folder == folder else load_catalog(tagged_folder)
    df = pd.read_parquet(Path(out) / "tags.parquet")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("tagged", summary["tagged"])
    m2.metric("skipped (bad image)", summary["skipped"])
    m3.metric("disagree with the catalog", summary["disagrees_with_catalog"])
    m4.metric("low confidence", summary["low_confidence"])
    with st.expander("Summary and accuracy against the catalog's labels"):
        st.code(format_summary(summary))
    flagged = df[df["disagrees_with_catalog"]].sort_values("disagreement", ascending=False)
    st.subheader(f"Likely catalog errors ({len(flagged)})")
    fields = summary["fields"]
    if len(flagged):
        for _, row in flagged.head(6).iterrows():
            c1, c2 = st.columns([1, 4])
            try:
                c1.image(tagged.load_image(tagged[row["id"]]), width=120)
            except Exception:
                c1.write("(image unavailable)")
            diffs = [f"**{f}**: catalog says *{row[f + '_catalog']}*, model says *{row[f]}* ({row[f + '_prob']:.2f})"
                     for f in row["disagreeing_fields"].split(",") if f]
            c2.markdown(f"{row['id']} · {row['title']}  \n" + "  \n".join(diffs))
        st.dataframe(flagged[["id", "title", "disagreeing_fields", "disagreement"]
                             + [c for f in fields for c in (f, f + "_catalog")]], hide_index=True)
    else:
        st.success("No confident prediction contradicts the catalog.")
    if summary["skipped"]:
        st.subheader("Skipped products")
        st.dataframe(df[df["bad_image"] != ""][["id", "title", "bad_image"]], hide_index=True)
    st.subheader("All rows")
    st.dataframe(df, hide_index=True)
    st.download_button("Download tags.csv", (Path(out) / "tags.csv").read_bytes(), "tags.csv", "text/csv")
    st.download_button("Download tags.parquet", (Path(out) / "tags.parquet").read_bytes(), "tags.parquet",
                       "application/octet-stream")
