"""Shared fixtures. Every test runs with its own cache dir and no network."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DANBOORU_CSV = SHARED_DATA / "danbooru.csv"


@pytest.fixture(autouse=True)
def _isolate_user_machine(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep tests off the user's caches, models and network."""
    cache = tmp_path_factory.mktemp("tagsmith-cache")
    monkeypatch.setenv("TAGSMITH_CACHE_DIR", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("TAGSMITH_MODEL", raising=False)
    monkeypatch.delenv("TAGSMITH_VOCAB", raising=False)
    # Wide terminal so rich tables in CLI output are not wrapped mid-token in assertions.
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")


@pytest.fixture
def danbooru_csv() -> Path:
    if not DANBOORU_CSV.is_file():
        pytest.skip("../shared/data/danbooru.csv is not present (only in the team's workspace)")
    return DANBOORU_CSV


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - tests/tiny_models.py
    """A tiny random SD1.5-style CLIP text encoder, saved lazily in every layout users keep.

    ``tiny_models.single_file()``, ``.ckpt()``, ``.hf_folder()``, ``.diffusers_folder()``...;
    ``tiny_models.weights`` holds its tensors. See tests/tiny_models.py.
    """
    from tiny_models import TinyModelFiles  # imports torch: only for tests that ask

    return TinyModelFiles(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def tiny_model(tiny_models) -> Path:  # noqa: ANN001
    """Path of a tiny A1111-layout single-file checkpoint, for `--model` in CLI tests."""
    return tiny_models.single_file()
