# Start a throwaway PostgreSQL server on loopback for the tests; sets LORAFIT_TEST_POSTGRES_URL.
start_test_postgres() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  local data=/tmp/lorafit-pg-$$
  rm -rf "$data" && mkdir -p "$data" && chown postgres "$data"
  su postgres -c "$bin/initdb -D $data -A trust -U postgres" >/dev/null
  su postgres -c "$bin/pg_ctl -D $data -o '-h 127.0.0.1 -p 55432 -k /tmp' -l $data/log -w start" >/dev/null
  su postgres -c "$bin/psql -h 127.0.0.1 -p 55432 -U postgres -c 'CREATE DATABASE lorafit_test'" >/dev/null
  export LORAFIT_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:55432/lorafit_test"
  trap "su postgres -c '$bin/pg_ctl -D $data -m fast stop' >/dev/null 2>&1 || true" EXIT
}
