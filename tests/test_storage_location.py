"""orchestrator/storage.py: one resolved value per URL, masking, and study names as folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import POSTGRES_URL, require_postgres, run_cli, write_sweep

from orchestrator.config import apply_overrides, literal_override, load_sweep
from orchestrator.errors import ConfigError
from orchestrator.storage import (
    StoreLocation,
    TrackingLocation,
    mask_argument,
    mask_text,
    mask_url,
    stored_form,
    study_folder,
)

SECRET = "Zq9 #s3cr@t/pw"
#: What a database driver can take unescaped: a space and a "#", but no "@".
HASHED = "pa #ss-Zq9"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql+psycopg://user:hunter22@db:5432/studies",
            "postgresql+psycopg://user:***@db:5432/studies",
        ),
        # A password with a space, " #", "@" or "/" (unescaped) is masked whole, never cut.
        (f"postgresql://user:{SECRET}@db/x", "postgresql://user:***@db/x"),
        ("mysql+pymysql://u:pw1234@h/db?charset=utf8", "mysql+pymysql://u:***@h/db?charset=utf8"),
        (
            "postgresql://user@db/x?password=hunter22&sslmode=require",
            "postgresql://user@db/x?password=***&sslmode=require",
        ),
        (
            "https://user:tok3n99@mlflow.example/x?token=abcd1234",
            "https://user:***@mlflow.example/x?token=***",
        ),
        ("https://ghp_tok3n99@mlflow.example", "https://***@mlflow.example"),
        ("postgresql://user@db/x", "postgresql://user@db/x"),
        ("sqlite:////srv/ftsweep.db", "sqlite:////srv/ftsweep.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
    ],
)
def test_mask_url_hides_every_form_of_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_text_masks_urls_in_prose_and_every_password_seen() -> None:
    url = "postgresql://u:hunter22@db/x"
    StoreLocation.resolve(url)  # a resolved URL's password is remembered
    text = f"could not connect to {url}: password hunter22 rejected"
    assert "hunter22" not in mask_text(text)
    assert "postgresql://u:***@db/x" in mask_text(text)


def test_mask_argument_masks_a_command_line_argument_holding_spaces() -> None:
    assert mask_argument(f"postgresql://u:{SECRET}@db/x") == "postgresql://u:***@db/x"
    assert (
        mask_argument(f"study.storage=postgresql://u:{SECRET}@db/x")
        == "study.storage=postgresql://u:***@db/x"
    )
    assert mask_argument("--n-trials") == "--n-trials"


def test_the_location_keeps_the_password_for_connecting_and_shows_it_masked() -> None:
    location = StoreLocation.resolve(f"postgresql+psycopg://user:{SECRET}@db:5432/studies")
    assert location.url == f"postgresql+psycopg://user:{SECRET}@db:5432/studies"
    assert location.display == "postgresql+psycopg://user:***@db:5432/studies"
    assert location.shared and location.sqlite_file is None
    assert SECRET not in repr(location) and SECRET not in str(location)


def test_a_relative_sqlite_file_is_made_absolute_and_its_folder_is_the_work_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    location = StoreLocation.resolve("sqlite:///runs/ftsweep.db")
    assert location.sqlite_file == Path.cwd() / "runs" / "ftsweep.db"
    assert location.url == f"sqlite:///{Path.cwd() / 'runs' / 'ftsweep.db'}"
    assert location.work_root == Path.cwd() / "runs"
    assert not location.shared
    assert location.study_dir("demo") == Path.cwd() / "runs" / "ftsweep-runs" / "demo"


def test_the_environment_gives_the_url_and_env_references_are_expanded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FTSWEEP_STORAGE", "postgresql+psycopg://u@db/from-env")
    assert StoreLocation.resolve(None).url == "postgresql+psycopg://u@db/from-env"
    monkeypatch.setenv("DB_PASSWORD", SECRET)
    location = StoreLocation.resolve("postgresql+psycopg://u:${DB_PASSWORD}@db/x")
    assert location.url == f"postgresql+psycopg://u:{SECRET}@db/x"
    assert location.display == "postgresql+psycopg://u:***@db/x"
    # What the study keeps of a ${NAME} reference is the reference: no secret in it.
    assert (
        stored_form("postgresql+psycopg://u:${DB_PASSWORD}@db/x", location.url)
        == "postgresql+psycopg://u:${DB_PASSWORD}@db/x"
    )
    assert stored_form(location.url, location.url) == "postgresql+psycopg://u:***@db/x"


def test_an_unset_env_reference_names_the_key_and_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(
        ConfigError, match=r"study.storage: the environment variable NOT_SET_ANYWHERE is not set"
    ):
        StoreLocation.resolve("postgresql://u:${NOT_SET_ANYWHERE}@db/x")


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://", "sqlite:///file::memory:?cache=shared"]
)
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="in-memory SQLite database") as raised:
        StoreLocation.resolve(url, key="--storage")
    assert str(raised.value).startswith(f"--storage {url}")
    with pytest.raises(ConfigError, match="in-memory"):
        TrackingLocation.resolve(url)


def test_in_memory_storage_is_one_line_exit_2_and_creates_nothing(tmp_path: Path) -> None:
    write_sweep(
        tmp_path,
        {
            "study": {"name": "mem"},
            "trainer": {"name": "noop"},
            "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        },
    )
    result = run_cli(["run", "sweep.yaml", "--storage", "sqlite://"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "in-memory SQLite database" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.yaml"]


def test_a_stored_tracking_uri_without_its_password_needs_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match="its password was not stored"):
        TrackingLocation.resolve("https://user:***@mlflow.example")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:realpw99@mlflow.example")
    assert (
        TrackingLocation.resolve("https://user:***@mlflow.example").uri
        == "https://user:realpw99@mlflow.example"
    )


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("campaign-response", "campaign-response"),
        ("bert_v1.2", "bert_v1.2"),
        ("../../escape", "%2E.%2F..%2Fescape"),
        ("/abs/path", "%2Fabs%2Fpath"),
        ("..", "%2E%2E"),
        (".", "%2E"),
        ("a/b", "a%2Fb"),
        ("a\\b", "a%5Cb"),
        ("%2F", "%252F"),
    ],
)
def test_study_folder_is_always_a_direct_child_of_its_root(tmp_path: Path, name: str, folder: str) -> None:
    path = study_folder(tmp_path, name)
    assert path == tmp_path / folder
    assert path.parent == tmp_path


def test_study_folder_shortens_long_names_and_keeps_distinct_names_apart(tmp_path: Path) -> None:
    long_a, long_b = "x" * 199 + "a", "x" * 199 + "b"
    assert len(study_folder(tmp_path, long_a).name) <= 120
    assert study_folder(tmp_path, long_a) != study_folder(tmp_path, long_b)
    assert study_folder(tmp_path, "a/b") != study_folder(tmp_path, "a%2Fb")


def test_a_flag_value_is_taken_as_the_string_it_is() -> None:
    raw = apply_overrides(
        {},
        [
            literal_override("study.storage", f"postgresql://u:{SECRET}@db/x"),
            literal_override("execution.ray_address", "123"),
        ],
    )
    assert raw["study"]["storage"] == f"postgresql://u:{SECRET}@db/x"
    assert raw["execution"]["ray_address"] == "123"


def test_a_password_with_space_hash_survives_storage_to_the_engine(tmp_path: Path) -> None:
    """Issue 9: `--storage postgresql://u:pa #ss@h/db` used to become `postgresql://u:pa` (YAML comment)."""
    from orchestrator.cli import _backend_overrides, build_parser
    from orchestrator.study import open_storage

    require_postgres()
    host = POSTGRES_URL.split("@", 1)[1]
    url = f"postgresql+psycopg://postgres:{HASHED}@{host}"
    path = write_sweep(
        tmp_path,
        {
            "study": {"name": "hash"},
            "trainer": {"name": "noop"},
            "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
        },
    )
    args = build_parser().parse_args(["run", str(path), "--storage", url, "--ray-address", "ray://h:1 #x"])
    overrides = [*_backend_overrides(args), literal_override("study.storage", args.storage)]
    sweep = load_sweep(path, overrides)
    assert sweep.execution.ray_address == "ray://h:1 #x"
    storage = open_storage(sweep.store)  # the real PostgreSQL (trust auth: any password connects)
    try:
        assert storage.engine.url.password == HASHED
    finally:
        storage.engine.dispose()


def test_a_storage_flag_with_space_hash_reaches_the_store_through_the_cli(tmp_path: Path) -> None:
    """The real CLI: a SQLite folder named with " #" is where the store is created (not cut at the "#")."""
    folder = tmp_path / "team #1"
    folder.mkdir()
    write_sweep(
        tmp_path,
        {
            "study": {"name": "hashed", "n_trials": 1},
            "trainer": {"name": "noop", "epochs": 1},
            "search_space": {"x": {"type": "float", "low": 0, "high": 1}},
            "tracking": {"enabled": False},
        },
    )
    result = run_cli(["run", "sweep.yaml", "--storage", f"sqlite:///{folder}/ftsweep.db"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (folder / "ftsweep.db").is_file()
    assert (folder / "ftsweep-runs" / "hashed" / "logs").is_dir()
    assert not (tmp_path / "team").exists()
