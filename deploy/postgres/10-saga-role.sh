#!/usr/bin/env bash
# The service's own database role: docker-compose.yml mounts this directory at /docker-entrypoint-initdb.d, so the
# postgres image runs it once, as the superuser, when it initialises an empty data directory. It makes the login
# role SAGA_DB_USER (default saga; password SAGA_DB_PASSWORD, required) and the database SAGA_DB_NAME (default
# saga) that it owns; nobody else may connect to that database. The app and `migrate` connect as that role, so the
# tables it creates are its own, and it can neither create roles or databases nor read other databases.
#
# Run again (e.g. `docker compose exec postgres /docker-entrypoint-initdb.d/10-saga-role.sh` for a data directory
# made before this script existed), it sets the role's password anew and hands it whatever the superuser still
# owns in the database's public schema. psql finds the server as usual (PGHOST, PGPORT; the socket by default).
set -euo pipefail

: "${SAGA_DB_PASSWORD:?set SAGA_DB_PASSWORD, the password of the role the service connects as}"
role="${SAGA_DB_USER:-saga}"
database="${SAGA_DB_NAME:-saga}"
superuser="${POSTGRES_USER:-postgres}"

as_superuser() {
  psql -X -q -v ON_ERROR_STOP=1 --no-password --username "$superuser" -v role="$role" -v database="$database" \
    -v password="$SAGA_DB_PASSWORD" "$@"
}

as_superuser --dbname postgres <<'SQL'
-- The role, or a new password for it: never a superuser, and no rights to make roles or databases.
SELECT format('CREATE ROLE %I', :'role') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec
ALTER ROLE :"role" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'password';
-- Its database, which it owns (and with it the public schema, owned by the database's owner).
SELECT format('CREATE DATABASE %I OWNER %I', :'database', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'database')
\gexec
ALTER DATABASE :"database" OWNER TO :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
SQL

as_superuser --dbname "$database" <<'SQL'
-- A database made before this script (by POSTGRES_DB): its schema and tables become the role's.
ALTER SCHEMA public OWNER TO :"role";
SELECT format('ALTER %s public.%I OWNER TO %I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             ELSE 'TABLE' END, c.relname, :'role')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S', 'v', 'm') AND c.relowner <> (
       SELECT oid FROM pg_roles WHERE rolname = :'role')
   -- A sequence owned by a table column moves with its table.
   AND NOT (c.relkind = 'S' AND EXISTS (SELECT FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
\gexec
SQL
