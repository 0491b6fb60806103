"""Table and Queue storage: clients, the job queue, watch rows, claims, history, the poison queue."""
