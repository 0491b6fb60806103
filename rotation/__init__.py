"""cmk-rotator: keeps CMK-encrypted DocumentDB clusters on the newest key version.

The rules the code cites ("rule 3"), the outcome vocabulary and the flow are in docs/design.md.
"""
