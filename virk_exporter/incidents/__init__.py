"""Incidents: Alertmanager webhook → reproducible bundle in a store → link in the page → replay.

webhook.py  payload v4 parsing and validation, credentials, size limit, replica routing
bundle.py   IncidentContext, building (deterministic bytes), safe reading, verification
report.py   the self-contained report.html inside a bundle
store.py    LocalStore, S3Store (minio SDK), SpoolingStore, open_store(url)
journal.py  the intake journal: accepted alerts on disk until built (survives a worker crash)
manager.py  IncidentManager: idempotent, newest-first background bundle building in the worker
http.py     the HTTP handlers for POST /api/v1/alerts and GET /incidents/<fingerprint>
replay.py   re-running predict, drift and diagnosis over a bundle
"""
