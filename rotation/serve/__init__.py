"""`rotation serve`: the Functions host's work outside it (webhook, queue worker, timer, HTTP routes)."""
