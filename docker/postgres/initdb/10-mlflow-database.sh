#!/bin/sh
# Run by the postgres image's entrypoint once, when the data volume is first initialised (an
# existing volume skips it): a second database, for MLflow's backend store, next to the study
# database $POSTGRES_DB.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="${MLFLOW_DB:-mlflow}" -v owner="$POSTGRES_USER" <<'SQL'
CREATE DATABASE :"db" OWNER :"owner";
SQL
