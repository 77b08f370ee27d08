"""``ftsweep predict``: score a CSV / JSONL / Parquet file with a model ``ftsweep final`` exported.

The model is a folder (``ftsweep-runs/NAME/final/model``, or ``--out`` of ``final``) or a Model
Registry version (``models:/NAME/VERSION``). The trainer that exported it loads it
(:meth:`trainers.base.BaseTrainer.load_predictor`), so a user's own trainer scores files too.
The input is read and written in chunks (a file larger than memory is fine), with a progress bar
on stderr; the output holds every input column and the predictor's own columns
(``predict_frame``): ``predicted_label`` and one ``probability_<class>`` column per class, or
``prediction`` (in the label's units) for a regression model. A predictor without ``predict_frame``
(a user's trainer) gives the classification columns from ``predict_proba``. The output is written
to a temporary file and renamed at the end: a failed run leaves no half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from trainers.base import Predictor

FORMATS = (".csv", ".jsonl", ".parquet")
#: Rows read, scored and written at a time (the model sees them in batches of --batch-size).
CHUNK_ROWS = 4096
REGISTRY_SCHEME = "models:/"


def run_predict(
    model: str, input_file: str, out: str | None = None, batch_size: int = 64, tracking_uri: str | None = None
) -> tuple[Path, int]:
    """Score ``input_file``; the output file and the number of rows.

    Raises:
        UserError: for a model that is not one ``ftsweep final`` exported, an input file that is
            missing, of another format or without the text column, or an output of another format.
    """
    source = Path(input_file).expanduser()
    if source.suffix.lower() not in FORMATS:
        raise UserError(
            f"{source}: the input must be one of {', '.join(FORMATS)} (got "
            f"{source.suffix or 'no extension'!r})"
        )
    if not source.is_file():
        raise UserError(f"{source}: there is no such file")
    target = Path(out).expanduser() if out else source.with_name(f"{source.stem}.predictions{source.suffix}")
    if target.suffix.lower() not in FORMATS:
        raise UserError(f"--out {target}: the output must be one of {', '.join(FORMATS)}")
    if target.resolve() == source.resolve():
        raise UserError(f"--out {target}: it is the input file; give another name")
    with _model_folder(model, tracking_uri) as folder:
        predictor = _load(folder, model)
        column = predictor.input_column
        columns, total = _columns_and_rows(source)
        if column not in columns:
            raise UserError(
                f"{source} has no column {column!r}, the text column the model was trained on; "
                f"its columns are: {', '.join(columns) or '(none)'}"
            )
        rows = _score(predictor, source, target, column, batch_size, total)
    return target, rows


# -- the model --------------------------------------------------------------------------------------


class _model_folder:  # noqa: N801 - used as a context manager, like a function
    """The model's local folder: the folder given, or a registry version downloaded into a temporary one."""

    def __init__(self, model: str, tracking_uri: str | None) -> None:
        self.model = model
        self.tracking_uri = tracking_uri
        self.temporary: str | None = None

    def __enter__(self) -> Path:
        if not self.model.startswith(REGISTRY_SCHEME):
            folder = Path(self.model).expanduser()
            if not folder.is_dir():
                raise UserError(
                    f"{folder}: there is no such model folder; give the folder `ftsweep final` printed"
                )
            return folder
        self.temporary = tempfile.mkdtemp(prefix="ftsweep-predict-")
        return _download(self.model, self.tracking_uri, Path(self.temporary))

    def __exit__(self, *exc: object) -> None:
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)


def _download(model: str, tracking_uri: str | None, into: Path) -> Path:
    """A registry version's transformers-flavor files, laid out as an exported folder."""
    import mlflow
    import yaml

    from orchestrator.storage import TrackingLocation
    from orchestrator.tracking import check_reachable

    tracking = TrackingLocation.resolve(tracking_uri, key="--tracking-uri")
    check_reachable(tracking)
    mlflow.set_tracking_uri(tracking.uri)
    mlflow.set_registry_uri(tracking.uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(into / "download")))
    except Exception as error:  # noqa: BLE001 - MLflow's errors are many; one line for the user
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"{model}: cannot fetch it from the MLflow store {tracking.display}: {detail}"
        ) from error
    try:
        description = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
        flavors = description["flavors"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as error:
        raise UserError(f"{model} is not a model logged by `ftsweep final` (no readable MLmodel)") from error
    if "transformers" not in flavors:
        # A pyfunc model around the exported folder (a mean-pooling model: orchestrator.mlflow_model).
        exported = local / "artifacts" / "model_dir"
        if (exported / "ftsweep_model.json").is_file():
            return exported
        raise UserError(f"{model} is not a model logged by `ftsweep final`")
    flavor = flavors["transformers"]
    folder = into / "model"
    shutil.copytree(local / flavor.get("model_binary", "model"), folder)
    for component in flavor.get("components", []):
        for path in (local / "components" / component).iterdir():
            shutil.copy2(path, folder / path.name)
    info = (description.get("metadata") or {}).get("ftsweep_model") or {}
    if not info:
        raise UserError(f"{model} was not logged by `ftsweep final` (its metadata has no ftsweep_model)")
    (folder / "ftsweep_model.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def _load(folder: Path, model: str) -> Predictor:
    from trainers.base import load_trainer_class

    info_file = folder / "ftsweep_model.json"
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        trainer_name = str(info["trainer"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{model} is not a model exported by `ftsweep final` (no readable ftsweep_model.json in "
            f"{folder}); "
            "give the folder `ftsweep final` printed, or models:/NAME/VERSION"
        ) from None
    trainer_cls = load_trainer_class(trainer_name)
    if not trainer_cls.implements_final():
        raise UserError(
            f"{model}: its trainer {trainer_name!r} has no load_predictor hook (trainers/base.py)"
        )
    return trainer_cls.load_predictor(folder, _device())


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- reading and writing ----------------------------------------------------------------------------


def _columns_and_rows(path: Path) -> tuple[list[str], int | None]:
    """The file's columns and, when it is cheap to know, its number of rows (for the progress bar)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            return list(parquet.schema_arrow.names), parquet.metadata.num_rows
        if suffix == ".csv":
            import pandas as pd

            return [str(column) for column in pd.read_csv(path, nrows=0, dtype=str).columns], None
        with open(path, encoding="utf-8") as stream:
            for line in stream:
                if line.strip():
                    record = json.loads(line)
                    return (list(record) if isinstance(record, dict) else []), None
        return [], None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} cannot be read: {str(error).strip().splitlines()[0]}") from error


def _chunks(path: Path) -> Iterator[pd.DataFrame]:
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=CHUNK_ROWS)
    elif suffix == ".jsonl":
        yield from pd.read_json(path, lines=True, chunksize=CHUNK_ROWS, dtype=False)
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS):
            yield batch.to_pandas()


def _score(
    predictor: Predictor, source: Path, target: Path, column: str, batch_size: int, total: int | None
) -> int:
    from tqdm import tqdm  # type: ignore[import-untyped]

    temporary = target.with_name(f".{target.name}.partial")
    writer = _Writer(temporary, target.suffix.lower())
    rows = 0
    try:
        with tqdm(total=total, unit=" rows", desc="predict", dynamic_ncols=True) as bar:
            for frame in _chunks(source):
                texts = ["" if value is None else str(value) for value in frame[column].tolist()]
                frame = frame.copy()
                for name, values in _predicted_columns(predictor, texts, batch_size).items():
                    frame[name] = values
                writer.write(frame)
                rows += len(frame)
                bar.update(len(frame))
        writer.close()
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, target)
    except BaseException:
        writer.close()
        temporary.unlink(missing_ok=True)
        raise
    return rows


def _predicted_columns(predictor: Predictor, texts: list[str], batch_size: int) -> dict[str, Any]:
    """The columns the predictor adds for ``texts``, scored ``batch_size`` at a time."""
    import numpy as np
    import pandas as pd

    predict_frame = getattr(predictor, "predict_frame", None)
    if predict_frame is not None:
        parts = [predict_frame(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        scored = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        return {name: scored[name].to_numpy() for name in scored.columns}
    labels = list(predictor.labels)
    probabilities = [
        predictor.predict_proba(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)
    ]
    stacked = np.concatenate(probabilities) if probabilities else np.zeros((0, len(labels)))
    columns: dict[str, Any] = {"predicted_label": [labels[index] for index in stacked.argmax(axis=1)]}
    for index, label in enumerate(labels):
        columns[f"probability_{label}"] = stacked[:, index]
    return columns


class _Writer:
    """Appends frames to a CSV, JSONL or Parquet file."""

    def __init__(self, path: Path, suffix: str) -> None:
        self.path = path
        self.suffix = suffix
        self.first = True
        self.parquet: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        if self.suffix == ".csv":
            frame.to_csv(self.path, mode="w" if self.first else "a", header=self.first, index=False)
        elif self.suffix == ".jsonl":
            with open(self.path, "w" if self.first else "a", encoding="utf-8") as stream:
                text = frame.to_json(orient="records", lines=True, force_ascii=False)
                stream.write(text if text.endswith("\n") else text + "\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.path, table.schema)
            self.parquet.write_table(table)
        self.first = False

    def close(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
            self.parquet = None
        elif self.first and not self.path.exists():
            self.path.write_text("", encoding="utf-8")
