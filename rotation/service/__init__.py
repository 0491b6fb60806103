"""The service: event fan-out, the job worker, registration, reconcile, the runtime and the HTTP API."""
