"""Adapters: one module per port implementation. AWS ones live in `aws/` and import boto3 lazily."""
