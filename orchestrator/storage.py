"""The study's storage URL and the MLflow tracking URI, each resolved once into one value.

A URL is read from the command line (``--storage``), the sweep file (``study.storage``,
``tracking.mlflow_uri``) or the environment (``FTSWEEP_STORAGE``, ``MLFLOW_TRACKING_URI``), in
that order; ``${NAME}`` in it is replaced by the environment variable ``NAME`` (so a password
need not be in the file); a relative SQLite file is made absolute. The result is a
:class:`StoreLocation` (or :class:`TrackingLocation`) that the rest of ftsweep passes around
and never parses again.

Credentials: a URL may carry a password. It is used to connect and nowhere else: everything
that is shown, logged, put in an error or stored (the study's sweep file, MLflow params and
artifacts) goes through :func:`mask_url` / :func:`mask_text`. The usual ways to keep the
password out of the URL altogether work unchanged: ``PGPASSWORD`` or ``~/.pgpass`` for
PostgreSQL (psycopg reads them when the URL has no password), and
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` for an MLflow tracking server.

Study names: Optuna accepts any string as a study name; :func:`study_folder` is the only way
one becomes a folder name, so no name can reach outside the run folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ConfigError

DEFAULT_STORAGE = "sqlite:///ftsweep.db"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
STORAGE_ENV = "FTSWEEP_STORAGE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: The folder, beside the study's SQLite file (or in the working directory), that holds every study's folder.
RUNS_FOLDER = "ftsweep-runs"
MASK = "***"

#: Passwords seen in URLs this process resolved: :func:`mask_text` removes them from any text
#: (a traceback, a library's error message), even where they do not appear inside a URL.
_SECRETS: set[str] = set()

# scheme://user:password@rest - the password runs to the last "@" before the host, so a
# password holding an unescaped "@", "/", "#" or a space is masked whole (over-masking a
# display is harmless; under-masking leaks).
_USERINFO = re.compile(
    r"^(?P<head>[A-Za-z][\w+.-]*://)(?P<user>[^:/@?#]*):(?P<password>.*)@(?P<tail>[^@]*)$", re.S
)
# http(s)://token@host: a user name alone is a token there (never for a database URL).
_HTTP_TOKEN = re.compile(r"^(?P<head>https?://)(?P<token>[^:/@?#]+)@(?P<tail>[^@]*)$", re.I)
_SECRET_PARAMS = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|secret|token|access_token|api_key|apikey|sslpassword|key)=)[^&;#]*",
    re.I,
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"<>]+")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def mask_url(url: str) -> str:
    """``url`` with its password (``user:***@``, ``password=***``, an HTTP token) replaced by ``***``.

    Works on any SQLAlchemy URL and any MLflow tracking URI; text without credentials comes
    back unchanged. Use it wherever a URL is printed, logged, raised or stored.
    """
    masked = url
    match = _USERINFO.match(masked)
    if match:
        _remember(match["password"])
        masked = f"{match['head']}{match['user']}:{MASK}@{match['tail']}"
    else:
        match = _HTTP_TOKEN.match(masked)
        if match:
            _remember(match["token"])
            masked = f"{match['head']}{MASK}@{match['tail']}"
    return _SECRET_PARAMS.sub(lambda m: m["key"] + MASK, masked)


def mask_text(text: str) -> str:
    """Free text (an error, a traceback, a command line): every URL masked, every known password removed."""
    masked = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        masked = masked.replace(secret, MASK)
    return masked


def mask_argument(argument: str) -> str:
    """One command-line argument masked; unlike :func:`mask_text`, a password with spaces is masked whole."""
    head, sep, value = argument.partition("=")
    if sep and "://" in value and "://" not in head:
        return f"{head}={mask_text(mask_url(value))}"
    return mask_text(mask_url(argument)) if "://" in argument else mask_text(argument)


def has_masked_password(url: str) -> bool:
    """Whether ``url`` is a masked URL (its password was not stored, so it cannot be used to connect)."""
    return mask_url(url) == url and (f":{MASK}@" in url or f"={MASK}" in url or f"//{MASK}@" in url)


def _remember(secret: str) -> None:
    # Short strings (an empty password, "x") would mask unrelated text; they are masked inside URLs only.
    if len(secret) >= 4 and secret != MASK:
        _SECRETS.add(secret)


def expand_env(text: str, key: str) -> str:
    """``text`` with each ``${NAME}`` replaced by the environment variable ``NAME``.

    Raises:
        ConfigError: naming ``key`` and the variable when it is not set.
    """

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"{key}: the environment variable {name} is not set (the value refers to ${{{name}}})"
            )
        return os.environ[name]

    return _ENV_REFERENCE.sub(value, text)


def _sqlite_database(url: str) -> str | None:
    """The database part of a ``sqlite`` URL (``None``: in memory), or ``""`` when ``url`` is not SQLite."""
    match = re.match(r"^sqlite(?:\+\w+)?://(?P<rest>.*)$", url, re.S)
    if not match:
        return ""
    rest = match["rest"]
    if not rest.startswith("/"):
        return None  # "sqlite://": SQLAlchemy's in-memory database
    database = rest[1:].split("?", 1)[0]
    query = rest[1:].partition("?")[2]
    if (
        not database
        or database == ":memory:"
        or database.startswith("file::memory:")
        or "mode=memory" in query
    ):
        return None
    return database


def _absolute_sqlite(url: str, key: str, base_dir: Path) -> tuple[str, Path | None]:
    """``url`` with a relative SQLite file made absolute against ``base_dir``, and that file (or None)."""
    database = _sqlite_database(url)
    if database == "":
        return url, None
    if database is None:
        example = DEFAULT_STORAGE if "storage" in key.lower() else DEFAULT_TRACKING_URI
        raise ConfigError(
            f"{key} {mask_url(url)}: an in-memory SQLite database ends with the process that opened it, so "
            f"the study could never be resumed or read; use a file, e.g. {example}"
        )
    scheme = url.split("://", 1)[0]
    query = url.split("://", 1)[1][1:].partition("?")
    path = Path(database).expanduser()
    path = path if path.is_absolute() else base_dir / path
    path = Path(os.path.abspath(path))
    return f"{scheme}:///{path}" + (f"?{query[2]}" if query[1] else ""), path


def _given_or_default(
    explicit: str | None, env: str, default: str, key: str, what: str, example: str
) -> tuple[str, str]:
    """The value given, else ``$env``, else ``default``, with ``${NAME}`` expanded, and the key it came from.

    Raises:
        ConfigError: for an unset ``${NAME}`` or an empty value.
    """
    if explicit is None and os.environ.get(env):
        raw, key = os.environ[env], env
    else:
        raw = default if explicit is None else explicit
    value = expand_env(raw.strip(), key)
    if not value:
        raise ConfigError(f"{key}: the {what} is empty; e.g. {default} or {example}")
    return value, key


@dataclass(frozen=True)
class StoreLocation:
    """The study's storage, resolved once.

    Attributes:
        url: what is opened; may carry a password, so it is never displayed, logged or stored.
        display: ``url`` with its password masked: for messages, logs and what is stored.
        sqlite_file: the SQLite file (absolute), or None for a server database.
        shared: a server database (PostgreSQL, MySQL), which workers on other machines may share.
        work_root: where the run folder (``ftsweep-runs``) goes: beside the SQLite file actually
            opened, else the working directory.
    """

    url: str
    display: str
    sqlite_file: Path | None
    shared: bool
    work_root: Path

    @classmethod
    def resolve(
        cls, explicit: str | None, base_dir: Path | None = None, key: str = "study.storage"
    ) -> StoreLocation:
        """The given URL, else ``$FTSWEEP_STORAGE``, else ``sqlite:///ftsweep.db``; ``${NAME}`` expanded.

        Args:
            explicit: ``--storage`` or ``study.storage``, or None.
            base_dir: the folder a relative SQLite file is relative to (default: the working directory).
            key: how the value is named in errors (``--storage``, ``study.storage``).

        Raises:
            ConfigError: for an unset ``${NAME}``, an empty URL or an in-memory SQLite database.
        """
        url, key = _given_or_default(
            explicit, STORAGE_ENV, DEFAULT_STORAGE, key, "storage URL", "postgresql+psycopg://user@host/db"
        )
        if "://" not in url:
            raise ConfigError(
                f"{key} {mask_url(url)!r}: not a database URL; e.g. {DEFAULT_STORAGE} or "
                "postgresql+psycopg://user@host/db"
            )
        base = Path.cwd() if base_dir is None else Path(base_dir)
        url, sqlite_file = _absolute_sqlite(url, key, base)
        work_root = sqlite_file.parent if sqlite_file is not None else Path(os.path.abspath(base))
        return cls(
            url=url,
            display=mask_url(url),
            sqlite_file=sqlite_file,
            shared=sqlite_file is None,
            work_root=work_root,
        )

    def runs_dir(self) -> Path:
        """The folder that holds every study's folder."""
        return self.work_root / RUNS_FOLDER

    def study_dir(self, study_name: str) -> Path:
        """The study's own folder (logs, checkpoints by default, caches)."""
        return study_folder(self.runs_dir(), study_name)

    def __repr__(self) -> str:  # the dataclass's would show the password
        return f"StoreLocation({self.display!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class TrackingLocation:
    """The MLflow tracking URI, resolved once.

    Attributes:
        uri: what MLflow is given; may carry a password, never displayed.
        display: ``uri`` masked.
        sqlite_file: the SQLite file of a ``sqlite:///`` store, else None.
    """

    uri: str
    display: str
    sqlite_file: Path | None

    @classmethod
    def resolve(
        cls, explicit: str | None, base_dir: Path | None = None, key: str = "tracking.mlflow_uri"
    ) -> TrackingLocation:
        """The given URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; ``${NAME}`` expanded.

        Raises:
            ConfigError: for an unset ``${NAME}``, an in-memory SQLite store, or a stored URI whose
                password ftsweep did not keep (then ``$MLFLOW_TRACKING_URI`` must give it).
        """
        if explicit is not None and has_masked_password(explicit):
            if not os.environ.get(TRACKING_ENV):
                raise ConfigError(
                    f"{key} {explicit}: its password was not stored with the study; set {TRACKING_ENV} to "
                    "the "
                    "full URI (or MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD for a tracking server, "
                    "PGPASSWORD for PostgreSQL)"
                )
            explicit = None
        uri, key = _given_or_default(
            explicit, TRACKING_ENV, DEFAULT_TRACKING_URI, key, "tracking URI", "http://host:5000"
        )
        uri, sqlite_file = _absolute_sqlite(uri, key, Path.cwd() if base_dir is None else Path(base_dir))
        return cls(uri=uri, display=mask_url(uri), sqlite_file=sqlite_file)

    def __repr__(self) -> str:
        return f"TrackingLocation({self.display!r})"

    __str__ = __repr__


def stored_form(raw: str | None, resolved: str) -> str:
    """What the study keeps of a URL: ``raw`` if it uses ``${NAME}`` (no secret), else ``resolved`` masked."""
    if raw is not None and _ENV_REFERENCE.search(raw) and _sqlite_database(raw) == "":
        return raw
    return mask_url(resolved)


#: Characters a study name keeps in its folder name; every other character is percent-encoded.
_SAFE = re.compile(r"[A-Za-z0-9_.+=,@ -]")
#: Folder names above this length are shortened and made unique with a hash.
_MAX_FOLDER = 120


def study_folder(root: Path, study_name: str) -> Path:
    """``root / NAME``: the only way a study name becomes a folder, always a direct child of ``root``.

    Optuna accepts any string as a study name; the folder must not follow it. Separators,
    ``%``, control and non-ASCII characters are percent-encoded (``../x`` becomes ``%2E.%2Fx``,
    ``/abs`` becomes ``%2Fabs``), a leading dot is encoded (no ``.``, ``..`` or hidden folders),
    and a name whose folder would be longer than 120 characters is shortened with a hash of
    the whole name. Distinct names give distinct folders; ordinary names (letters, digits,
    ``-``, ``_``, ``.``) are kept as they are.

    Raises:
        ConfigError: for an empty name.
    """
    if not study_name:
        raise ConfigError("study.name: must not be empty")
    encoded = "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode()) for ch in study_name
    )
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded.endswith((" ", ".")):  # Windows-hostile and easy to misread
        encoded = encoded[:-1] + f"%{ord(encoded[-1]):02X}"
    if len(encoded) > _MAX_FOLDER:
        digest = hashlib.sha256(study_name.encode()).hexdigest()[:16]
        encoded = f"{encoded[: _MAX_FOLDER - 17].rstrip('%')}-{digest}"
    folder = Path(root) / encoded
    if folder.parent != Path(root):  # cannot happen with the encoding above; a guard for later edits
        raise ConfigError(f"study.name {study_name!r}: cannot be used as a folder name")
    return folder
