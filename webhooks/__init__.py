"""Webhooks: tenants' endpoints, the outbox the ledger's transitions write (a trigger, migrations/api_0004), and the
signed deliveries a worker on the `webhooks` queue makes from it (Standard Webhooks, with `standardwebhooks`)."""
