"""Benchmarks of fusesync against its peers (aws cli, rclone, s5cmd, s3cmd); not tests."""
