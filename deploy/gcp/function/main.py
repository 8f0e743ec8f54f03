"""Cloud Run functions source: deploy this folder with ``--entry-point webhook`` (deploy.sh)."""

from receiver.serverless.gcp import webhook

__all__ = ["webhook"]
