"""Code shared by the DAGs in this folder: assets, settings and the ingest/trigger logic.

Importable everywhere in one way: PYTHONPATH includes the DAGs folder (Makefile, tests, image,
chart). Nothing here may touch the metadata DB, a connection or the network at import time.
"""
