"""Streamlit pieces every page shares: the sidebar with the data sources, cached loaders, friendly errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import streamlit as st

from hetcache.errors import HetCacheError
from hetcache.run_record import RUN_FILE

from . import readers
from .sources import Found, configured_runs, configured_storage, discover

HELP_EMPTY = (
    "Run `make demo` (it writes `runs/demo/{profile,tune,apply}`), or start the dashboard on another folder with "
    "`hetcache-dashboard --runs DIR`."
)


def _persisted(key: str, default: Any) -> None:
    """Keep a widget's value across pages: Streamlit drops widget state when the widget is not rendered."""
    store = f"_keep_{key}"
    if store not in st.session_state:
        st.session_state[store] = default
    st.session_state[key] = st.session_state[store]


def _keep(key: str) -> None:
    """on_change: remember the widget's new value outside the widget state."""
    st.session_state[f"_keep_{key}"] = st.session_state[key]


def persisted_text_input(label: str, key: str, default: str, **kwargs: Any) -> str:
    """A text input that keeps its value across pages."""
    _persisted(key, default)
    return st.text_input(label, key=key, on_change=_keep, args=(key,), **kwargs)


def persisted_selectbox(label: str, options: list[str], key: str, **kwargs: Any) -> str | None:
    """A selectbox that remembers its choice across pages (falls back to the first option if it disappeared)."""
    if not options:
        return None
    store = f"_keep_{key}"
    if st.session_state.get(store) not in options:
        st.session_state[store] = options[0]
    st.session_state[key] = st.session_state[store]
    return st.selectbox(label, options, key=key, on_change=_keep, args=(key,), **kwargs)


@st.cache_data(ttl=5, show_spinner=False)
def _discover(root: str) -> Found:
    """Discovery, refreshed every few seconds so new runs appear."""
    return discover(Path(root))


def sidebar() -> tuple[Found, str]:
    """Render the data-source inputs; return what lies under the runs folder and the extra storage URL."""
    with st.sidebar:
        st.caption("Data sources")
        root = persisted_text_input("Runs folder", "src_runs", str(configured_runs()))
        storage = persisted_text_input(
            "Study storage URL", "src_storage", configured_storage(), placeholder="sqlite:///runs/demo/tune/study.db"
        )
        if st.button("Reload files", key="src_reload"):
            st.cache_data.clear()
            st.cache_resource.clear()
    return _discover(str(Path(root).expanduser())), storage.strip()


def explain_missing(found: Found, what: str) -> None:
    """The friendly message for a page with nothing to show."""
    if not found.root.is_dir():
        st.warning(f"The runs folder `{found.root}` does not exist. {HELP_EMPTY}")
    else:
        st.info(f"No {what} found under `{found.root}`. {HELP_EMPTY}")


def show_error(exc: HetCacheError) -> None:
    """One error box: what is wrong (naming the input) and how to fix it."""
    text = exc.what if exc.fix is None else f"{exc.what}\n\n**Fix:** {exc.fix}"
    st.error(text, icon=":material/error:")


@contextlib.contextmanager
def friendly() -> Iterator[None]:
    """Show a HetCacheError raised inside as an error box and end the page there, never as a traceback."""
    try:
        yield
    except HetCacheError as exc:
        show_error(exc)
        st.stop()


def _mtime(path: Path) -> float:
    """Modification time for cache keys (0 if the file is missing)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(show_spinner=False, max_entries=8)
def _profile(folder: str, stamp: float) -> readers.ProfileView:
    """Cached profile load (shared, not copied: its arrays can be large)."""
    return readers.load_profile(Path(folder))


def load_profile(folder: Path) -> readers.ProfileView:
    """A profile, cached until its profile.json changes."""
    return _profile(str(folder), _mtime(folder / "profile.json"))


@st.cache_data(show_spinner=False, max_entries=32)
def _run(folder: str, stamp: float) -> readers.RunView:
    """Cached run record."""
    return readers.load_run(Path(folder))


def load_run(folder: Path) -> readers.RunView:
    """A run folder's record, cached until its run.json changes."""
    return _run(str(folder), _mtime(folder / RUN_FILE))


@st.cache_resource(show_spinner=False, max_entries=16)
def _frames(path: str, stamp: float, what: str):
    """Cached decoded video."""
    return readers.read_frames(Path(path), what)


def load_frames(path: Path, what: str):
    """Decoded frames of a video, cached until the file changes."""
    return _frames(str(path), _mtime(path), what)


@st.cache_resource(show_spinner=False, max_entries=8)
def _mask(path: str, stamp: float):
    """Cached decoded mask."""
    return readers.read_mask_frames(Path(path))


def load_mask(path: Path):
    """Decoded mask frames, cached until the file changes."""
    return _mask(str(path), _mtime(path))


def try_load_profiles(found: Found) -> list[readers.ProfileView]:
    """Every profile under the runs folder that loads (others are reported on the Profile page)."""
    out = []
    for folder in found.profiles:
        with contextlib.suppress(HetCacheError):
            out.append(load_profile(folder))
    return out


def try_load_runs(found: Found) -> list[readers.RunView]:
    """Every run folder under the runs folder that loads (others are reported on the Compare page)."""
    out = []
    for folder in found.runs:
        with contextlib.suppress(HetCacheError):
            out.append(load_run(folder))
    return out
