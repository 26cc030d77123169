#!/bin/sh
# demo.sh - `make demo`: a store built from examples/ under ./var/demo, and a
# tour of what proxyctl does with it.  Everything it creates stays in
# ./var/demo; it starts no background process.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
P="$ROOT/bin/proxyctl"
DEMO="$ROOT/var/demo"
DB="$DEMO/store.db"
rm -rf "$DEMO"
mkdir -p "$DEMO"
run() { printf '\n$ %s\n' "$*"; "$@"; }

run "$P" --db "$DB" init
run "$P" --db "$DB" apply "$ROOT/examples"
run "$P" --db "$DB" list-sites
run "$P" --db "$DB" route-test https://api.example.com/v1/login -X POST
run "$P" --db "$DB" route-test http://routing.example.com/api/users
run "$P" --db "$DB" route-test http://blog.example.com/backup.SQL
run "$P" --db "$DB" route-test http://unknown.example.org/
cat > "$DEMO/broken.yaml" <<'YAML'
site: broken
hosts: [api.example.com]
upstreams:
  app:
    servers: [{address: "127.0.0.1:99999"}]
routes:
  - match: {path_regex: '^/(a|b'}
    upstreem: app
YAML
printf '\n$ %s\n' "$P --db $DB add-site $DEMO/broken.yaml   # every error, with file:line:col"
"$P" --db "$DB" add-site "$DEMO/broken.yaml" || echo "(exit $? - nothing was stored)"
run "$P" --db "$DB" add-site demo --host demo.example.com --upstream 127.0.0.1:9000
run "$P" --db "$DB" generations
run "$P" --db "$DB" rollback
run "$P" --db "$DB" generations
cat <<MSG

Try more:
  $P --db $DB dump | less
  $P --db $DB route-test http://pool.example.com/ -X DELETE
  $P --db $DB show-site api
  $P --db $DB validate $ROOT/examples/*.yaml
MSG
