#!/usr/bin/env bash
# bfl-hooks on Google Cloud. Run from the repository's root:
#
#   PROJECT=my-project REGION=europe-west1 deploy/gcp/deploy.sh secrets    # once
#   ... deploy/gcp/deploy.sh instance   # Cloud Run, instance-based billing (service.yaml)
#   ... deploy/gcp/deploy.sh request    # Cloud Run, request-based billing + the drain job
#   ... deploy/gcp/deploy.sh functions  # Cloud Run functions + the drain job
#
# Edit the manifests first (image, bucket, PROJECT_NUMBER, REGION). Every gcloud command and
# flag here is checked against `gcloud … --help` by tests/test_deploy_gcp.py.
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT to your Google Cloud project}"
REGION="${REGION:-europe-west1}"
#: One file per secret, named as the secret, holding its value (keep the folder out of git).
SECRETS_DIR="${SECRETS_DIR:-secrets}"
#: Seconds each drain may take: under the attempt deadline (120 s) and the service's
#: timeoutSeconds (300 s). A drain still running when the next one starts is harmless: jobs
#: are claimed, never shared.
DRAIN_BUDGET="${DRAIN_BUDGET:-50}"

secrets() {
  # Read by the manifests' secretKeyRef entries; values come from files, never from argv.
  for name in bfl-hooks-database-url bfl-hooks-webhook-secret bfl-api-key \
      bfl-hooks-admin-token bfl-hooks-gcs-hmac-id bfl-hooks-gcs-hmac-secret; do
    gcloud secrets create "$name" --project="$PROJECT" --replication-policy=automatic \
      --data-file="$SECRETS_DIR/$name"
  done
}

public() {
  # BFL calls the webhook without Google credentials, so the service takes unauthenticated
  # requests; the receiver authenticates each webhook by its secret and /drain by its token.
  gcloud run services add-iam-policy-binding bfl-hooks --project="$PROJECT" \
    --region="$REGION" --member=allUsers --role=roles/run.invoker
}

drain_job() {  # $1: the service's or function's URL
  # Cloud Scheduler calls POST /drain every minute with the admin token as a Bearer token.
  gcloud scheduler jobs create http bfl-hooks-drain --project="$PROJECT" \
    --location="$REGION" --schedule="* * * * *" --time-zone=Etc/UTC \
    --uri="$1/drain?budget=$DRAIN_BUDGET" --http-method=POST \
    --headers="Authorization=Bearer $(cat "$SECRETS_DIR/bfl-hooks-admin-token")" \
    --attempt-deadline=120s --max-retry-attempts=0
}

instance() {
  gcloud run services replace deploy/gcp/service.yaml --project="$PROJECT" --region="$REGION"
  public
}

request() {
  gcloud run services replace deploy/gcp/service-request-billing.yaml \
    --project="$PROJECT" --region="$REGION"
  public
  drain_job "$(gcloud run services describe bfl-hooks --project="$PROJECT" \
    --region="$REGION" --format='value(status.url)')"
}

functions() {
  # The source is deploy/gcp/function: main.py, plus a requirements.txt you add that installs
  # bfl-hooks with its gcp and s3 extras (see the README's Serverless section).
  gcloud functions deploy bfl-hooks --gen2 --project="$PROJECT" --region="$REGION" \
    --runtime=python312 --source=deploy/gcp/function --entry-point=webhook \
    --trigger-http --allow-unauthenticated --timeout=300s \
    --set-secrets="RECEIVER_DATABASE_URL=bfl-hooks-database-url:latest,RECEIVER_WEBHOOK_SECRET=bfl-hooks-webhook-secret:latest,RECEIVER_ADMIN_TOKEN=bfl-hooks-admin-token:latest,BFL_API_KEY=bfl-api-key:latest,RECEIVER_S3_ACCESS_KEY_ID=bfl-hooks-gcs-hmac-id:latest,RECEIVER_S3_SECRET_ACCESS_KEY=bfl-hooks-gcs-hmac-secret:latest" \
    --set-env-vars="RECEIVER_STORAGE_URL=s3://my-bfl-images/bfl,RECEIVER_S3_ENDPOINT_URL=https://storage.googleapis.com,RECEIVER_S3_REGION=auto,AWS_REQUEST_CHECKSUM_CALCULATION=when_required,AWS_RESPONSE_CHECKSUM_VALIDATION=when_required"
  drain_job "$(gcloud functions describe bfl-hooks --project="$PROJECT" \
    --region="$REGION" --format='value(serviceConfig.uri)')"
}

case "${1:-}" in
  secrets | instance | request | functions) "$1" ;;
  *) echo "usage: $0 secrets|instance|request|functions" >&2; exit 2 ;;
esac
