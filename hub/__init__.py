"""The city-run hub: enrolment, verified ingest, storage, fleet and open-data APIs."""
