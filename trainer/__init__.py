"""Everything that runs where training runs (laptop or EC2): models, data, the loop.

Never imports boto3 or paramiko.  Entry point: ``accelerate launch -m trainer --run-dir DIR``.
"""
