#!/usr/bin/env bash
# Install the Debian packages Makazi needs that pip cannot provide.
#   scripts/system-deps.sh base   python3-venv when the interpreter lacks venv; curl and jq,
#                                 which README's tour uses
#   scripts/system-deps.sh test   command-line clients and the browser used by the tests
#   scripts/system-deps.sh web    npm, to fetch MapLibre GL JS and Swagger UI (make vendor)
#   scripts/system-deps.sh bench  peers the benchmarks compare with (ogr2ogr from gdal-bin)
# PostGIS itself is installed by `makazi db ensure` (it picks the right PostgreSQL major).
# As root on Debian/Ubuntu this installs with apt; otherwise it prints the command.
set -euo pipefail
what=${1:-base}
PYTHON=${PYTHON:-python3}

missing=()
case "$what" in
  base)
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
    command -v curl >/dev/null || missing+=(curl)
    command -v jq >/dev/null || missing+=(jq)
    ;;
  test)
    command -v ogrinfo >/dev/null || missing+=(gdal-bin)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    # the connection pooler in front of the primary (tests/core/test_pgbouncer.py)
    command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
    # pg_auto_failover for the HA recipe's test (tests/core/test_auto_failover.py), built for
    # the PostgreSQL major the embedded cluster uses: the newest with PostGIS, else the newest
    major=""
    for dir in /usr/lib/postgresql/*/; do
      n=$(basename "$dir")
      [[ "$n" =~ ^[0-9]+$ ]] || continue
      if [ -f "/usr/share/postgresql/$n/extension/postgis.control" ]; then postgis_major=$n; fi
      major=$n
    done
    major=${postgis_major:-$major}
    if [ -n "$major" ] && [ ! -f "/usr/share/postgresql/$major/extension/pgautofailover.control" ]; then
      missing+=("postgresql-$major-auto-failover")
    fi
    # pdftotext and pdftoppm read the atlas PDF back
    command -v pdftotext >/dev/null || missing+=(poppler-utils)
    # QGIS's own Python bindings, for the client tests (its OAPIF provider)
    /usr/bin/python3 -c 'import qgis.core' 2>/dev/null || missing+=(python3-qgis)
    ;;
  web)
    command -v npm >/dev/null || missing+=(npm)
    ;;
  bench)
    command -v ogr2ogr >/dev/null || missing+=(gdal-bin)
    ;;
  *) echo "usage: $0 base|test|web|bench" >&2; exit 2 ;;
esac
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "missing system packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
  # only python3-venv (serve) and npm (make vendor) are needed; curl, jq and the test and
  # bench tools are for the tour, the tests and the benchmarks, which say what they miss
  [[ "$what" = web || " ${missing[*]} " == *" python3-venv "* ]] && exit 1 || exit 0
fi
export DEBIAN_FRONTEND=noninteractive
stamp=/var/lib/apt/periodic/makazi-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
  apt-get update -qq && mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi
echo "installing ${missing[*]} ..."
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  case "$what" in test|bench) ;; *) echo "could not install ${missing[*]}" >&2; exit 1 ;; esac
  # test and bench tools are optional one by one: what needs a missing one skips and says so
  for package in "${missing[@]}"; do
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null \
      || echo "could not install $package (tests that need it will skip)" >&2
  done
fi
exit 0
