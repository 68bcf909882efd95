-- The accounts database (tenants, API keys, audit log, usage), on the PostgreSQL
-- server Temporal uses (docker-compose.yml): run once, when the data volume is new.
-- agentrun's migrations (Alembic) create the tables at the API's first start.
-- Change the password for anything but a trial, in AGENTRUN_DATABASE_URL too.
CREATE USER agentrun WITH PASSWORD 'agentrun';
CREATE DATABASE agentrun OWNER agentrun;
