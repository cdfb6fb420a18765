"""Model artifacts: locations (s3://, archives, dirs) -> a verified local directory, once per host.

Entry points: storage.fetch.fetch_model, storage.requirements.install_requirements, and the
`shardserve download` command (storage.commands). Nothing here imports boto3 until S3 is used.
"""
