"""cmk-rotator: keeps CMK-encrypted DocumentDB clusters on the newest key version."""
