#!/bin/sh
# Writes RabbitMQ's boot-time definitions (users, vhost, permissions) from the
# weather-credentials Secret, passed in as env vars, to $1 (an emptyDir, never the image or
# a command line). RabbitMQ imports the file at every start (20-weather.conf), so the users
# on the PVC always get the passwords the Secret holds now: rotating a password is
# "update the Secret, restart the pod". Importing definitions also means no guest user is
# ever seeded.
#   RABBITMQ_USER / RABBITMQ_PASSWORD              the app: its own vhost, its own objects
#   RABBITMQ_ADMIN_USER / RABBITMQ_ADMIN_PASSWORD  management UI/API only (administrator)
#   RABBITMQ_VHOST                                 the app's vhost
#   RABBITMQ_APP_RESOURCES                         regex of the exchanges/queues the app owns
set -eu
out="$1"

# JSON string body: escape backslashes and double quotes (values are single-line).
esc() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'; }

for var in RABBITMQ_USER RABBITMQ_PASSWORD RABBITMQ_ADMIN_USER RABBITMQ_ADMIN_PASSWORD \
           RABBITMQ_VHOST RABBITMQ_APP_RESOURCES; do
  eval "value=\${$var:-}"
  if [ -z "$value" ]; then echo "definitions.sh: $var is empty" >&2; exit 1; fi
done
if [ "$RABBITMQ_USER" = "$RABBITMQ_ADMIN_USER" ]; then
  echo "definitions.sh: the app and admin users must differ" >&2; exit 1
fi

app=$(esc "$RABBITMQ_USER"); admin=$(esc "$RABBITMQ_ADMIN_USER")
vhost=$(esc "$RABBITMQ_VHOST"); own=$(esc "$RABBITMQ_APP_RESOURCES")
umask 077
cat > "$out.tmp" <<JSON
{
  "users": [
    {"name": "$app", "password": "$(esc "$RABBITMQ_PASSWORD")", "tags": ["monitoring"]},
    {"name": "$admin", "password": "$(esc "$RABBITMQ_ADMIN_PASSWORD")", "tags": ["administrator"]}
  ],
  "vhosts": [{"name": "$vhost"}],
  "permissions": [
    {"user": "$app", "vhost": "$vhost", "configure": "$own", "write": "$own", "read": "$own"},
    {"user": "$admin", "vhost": "$vhost", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
JSON
mv "$out.tmp" "$out"
