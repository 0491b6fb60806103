"""ARM and Key Vault adapters: the HTTP transport, request pacing, mongoClusters, operations, keys."""
