#!/bin/sh
# Rebuilds tests/data/regression-pg15.dump: PostgreSQL's own regression database (the one
# pg_upgrade's tests dump), made by pg_regress's parallel schedule on a private server and
# dumped with pg_dump -Fc. Debian 12, as root, with PostgreSQL 15 installed; it installs
# postgresql-server-dev-15 pinned to the installed version (never an upgrade of the
# server under a running one) and takes the matching source package.
set -eu
out=$(cd "$(dirname "$0")" && pwd)/regression-pg15.dump
version=$(dpkg-query -W -f='${Version}' postgresql-15)
work=$(mktemp -d)
trap 'runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/data" stop -m fast >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

apt-get install -y -q "postgresql-server-dev-15=$version" >/dev/null
grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ || cat > /etc/apt/sources.list.d/src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt-get update -qq
(cd "$work" && apt-get source --download-only "postgresql-15=$version" >/dev/null && tar xjf postgresql-15_*.orig.tar.bz2)
src=$(ls -d "$work"/postgresql-15.*/src/test/regress)

# regress.so from the same source; autoinc and refint ship with the server. The dump names
# their folder; /tmp/cb-regress is where the test builds them again on any machine.
lib=/tmp/cb-regress
mkdir -p "$lib"
cp /usr/lib/postgresql/15/lib/autoinc.so /usr/lib/postgresql/15/lib/refint.so "$lib/"
gcc -O2 -fPIC -shared -I/usr/include/postgresql/15/server "$src/regress.c" -o "$lib/regress.so"
cp "$src/regress.c" "$(dirname "$out")/regress/regress.c"
chown -R postgres "$work"

bin=/usr/lib/postgresql/15/bin
runuser -u postgres -- "$bin/initdb" -D "$work/data" -U postgres -E UTF8 --locale=C.UTF-8 >/dev/null
runuser -u postgres -- "$bin/pg_ctl" -D "$work/data" -l "$work/server.log" \
  -o "-p 54329 -k $work -c listen_addresses=''" start >/dev/null
(cd "$src" && runuser -u postgres -- /usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress \
  --host="$work" --port=54329 --inputdir=. --outputdir="$work/out" --dlpath="$lib" \
  --bindir="$bin" --schedule=parallel_schedule --max-connections=4)
"$bin/pg_dump" -h "$work" -p 54329 -U postgres -Fc -f "$out" regression
echo "wrote $out"
