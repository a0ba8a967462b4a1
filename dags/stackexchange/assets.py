"""The two raw Assets the producer emits and the consumer is scheduled on.

Their URIs are the real S3 locations of the objects, from the environment at parse time.
"""

from __future__ import annotations

import os

from airflow.sdk import Asset

BUCKET = os.environ.get("STACKEXCHANGE_BUCKET", "stackexchange-raw")
PREFIX = os.environ.get("STACKEXCHANGE_PREFIX", "raw/stackexchange").strip("/")

POSTS_KEY = f"{PREFIX}/Posts.xml"
USERS_KEY = f"{PREFIX}/Users.xml"

RAW_POSTS = Asset(name="stackexchange_raw_posts", uri=f"s3://{BUCKET}/{POSTS_KEY}")
RAW_USERS = Asset(name="stackexchange_raw_users", uri=f"s3://{BUCKET}/{USERS_KEY}")
