"""The medallion job's logic: typed, pure DataFrame -> DataFrame functions the notebooks call.

Only ``tables`` knows where tables live (Delta on Databricks, Parquet elsewhere), and only
``objects`` how to ask S3 what a raw object is now.
"""
