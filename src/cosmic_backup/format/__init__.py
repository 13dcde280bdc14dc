"""The on-disk format and nothing else: openssl-compatible encryption, MAC, compression,
the streaming pipeline, manifests, keys and the keyring. Imports nothing of ours but errors."""
