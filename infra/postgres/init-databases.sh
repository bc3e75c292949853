#!/bin/bash
# Runs once, on an empty data volume (official postgres image and the local stand-in alike):
# the databases of MLflow's tracking store and of its basic-auth user store, owned by POSTGRES_USER.
# Prefect's database is POSTGRES_DB, created by the image itself.
set -euo pipefail
for db in mlflow mlflow_auth; do
  psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname postgres -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
