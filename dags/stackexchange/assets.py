"""The two raw Assets the producer emits and the consumer is scheduled on: one per table, for
every site.

Each ingest publishes its own generation of a site's pair, so no fixed object holds "the"
Posts.xml: an Asset's URI is the pattern of every site's objects of that table
(``s3://{bucket}/{prefix}/*/*/Posts.xml``), and each event's extra names the site and the exact
objects (README: "Many sites"). The URIs come from the ``Storage`` settings the DAG file read.
"""

from __future__ import annotations

from airflow.sdk import Asset

from stackexchange.settings import Storage

POSTS, USERS = "Posts.xml", "Users.xml"


def raw_assets(storage: Storage) -> dict[str, Asset]:
    """``{"Posts.xml": Asset, "Users.xml": Asset}`` for ``storage``'s bucket and prefix."""
    return {
        member: Asset(
            name=f"stackexchange_raw_{member.removesuffix('.xml').lower()}",
            uri=f"s3://{storage.bucket}/{storage.prefix}/*/*/{member}",
        )
        for member in (POSTS, USERS)
    }
