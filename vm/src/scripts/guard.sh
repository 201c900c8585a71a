# shellcheck shell=sh
exec 3<&0 0</dev/null
if command -v setsid >/dev/null 2>&1; then setsid sh -c "$1" 3<&- & else sh -c "$1" 3<&- & fi
p=$!
{ cat <&3; kill -TERM -"$p" || kill -TERM "$p"; sleep 5; kill -KILL -"$p" || kill -KILL "$p"; } >/dev/null 2>&1 &
w=$!
exec 3<&-
wait "$p"; s=$?
kill "$w" 2>/dev/null
exit "$s"
