# Shared by store.sh and sentinel.sh (sourced, not run).

# A config-file string whatever it holds (spaces, quotes, $): every byte as \xHH in "...".
quoted() { printf '"%s"' "$(printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n' | sed 's/../\\x&/g')"; }

# The primary the first answering Sentinel of $SENTINELS names for $MASTER_NAME ("" when none
# answers), skipping the Sentinel at host $1 (a Sentinel does not ask itself).
primary_named_by_sentinels() {
  for sentinel in $SENTINELS; do
    [ "${sentinel%:*}" = "${1:-}" ] && continue
    answer=$(timeout 3 "$CLI" -h "${sentinel%:*}" -p "${sentinel##*:}" \
      SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
    case "$answer" in
      ""|*ERR*|*rror*) ;;
      *) echo "$answer"; return 0 ;;
    esac
  done
}
