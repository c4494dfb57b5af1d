#!/bin/sh
# setup.sh: create the sidecars' bucket, their least-privilege policy and
# their MinIO user. Idempotent: safe to run at every start (Compose's
# minio-init runs it). Needs `mc` and an alias with admin rights, e.g.
#
#   export MC_HOST_store=http://ROOT_USER:ROOT_PASSWORD@minio:9000
#   MINIO_ALIAS=store SIDECAR_S3_ACCESS_KEY=mmsidecar \
#     SIDECAR_S3_SECRET_KEY=... sh deploy/minio/setup.sh
#
# Settings (environment): MINIO_ALIAS (default store), BUCKET (default
# mmsidecar; must match the bucket in the policy), POLICY_FILE (default
# policy.json next to this script), POLICY_NAME (default mmsidecar),
# SIDECAR_S3_ACCESS_KEY and SIDECAR_S3_SECRET_KEY (required).
set -eu

alias="${MINIO_ALIAS:-store}"
bucket="${BUCKET:-mmsidecar}"
policy_file="${POLICY_FILE:-$(dirname "$0")/policy.json}"
policy_name="${POLICY_NAME:-mmsidecar}"
access_key="${SIDECAR_S3_ACCESS_KEY:?set SIDECAR_S3_ACCESS_KEY}"
secret_key="${SIDECAR_S3_SECRET_KEY:?set SIDECAR_S3_SECRET_KEY}"

if ! grep -q "arn:aws:s3:::${bucket}\"" "${policy_file}"; then
	echo "setup.sh: ${policy_file} does not name bucket ${bucket}: edit the policy first" >&2
	exit 1
fi

mc ready "${alias}"
mc mb --ignore-existing "${alias}/${bucket}"
mc admin policy create "${alias}" "${policy_name}" "${policy_file}"
mc admin user add "${alias}" "${access_key}" "${secret_key}"
# Attaching a policy that is already attached is an error: check first.
if ! mc admin user info "${alias}" "${access_key}" | grep -Eq "^PolicyName: *(.*,)?${policy_name}(,.*)?$"; then
	mc admin policy attach "${alias}" "${policy_name}" --user "${access_key}"
fi
echo "setup.sh: bucket ${bucket}, policy ${policy_name} and user ${access_key} are in place"
