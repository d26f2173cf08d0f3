# shellcheck shell=bash
# redact: copy stdin to stdout with credentials masked, like the Go
# package internal/redact (whose tests run this on the same cases):
# passwords in URLs (scheme://user:secret@host) and the values of
# password/token/secret parameters (password=secret, ?sslpassword=...).
#
#   source scripts/redact.sh
#   echo "DATABASE_URL=$DATABASE_URL" | redact
redact() {
  sed -E \
    -e 's#([A-Za-z][A-Za-z0-9+.-]*://[^[:space:]:/?\#@'"'"'"]*):([^[:space:]/?\#'"'"'"]*)@#\1:xxxxx@#g' \
    -e 's#(([A-Za-z_-]*)(password|passwd|pwd|token|secret|Password|Passwd|Pwd|Token|Secret|PASSWORD|PASSWD|PWD|TOKEN|SECRET)[[:space:]]*=[[:space:]]*)('"'"'[^'"'"']*'"'"'|"[^"]*"|[^[:space:]&;'"'"'"]+)#\1xxxxx#g'
}
