# Makazi app image. The database is a separate PostGIS server (see docker-compose.yml),
# reached through MAKAZI_DATABASE_URL.

# MapLibre GL JS comes from the npm registry at build time and is served by the app itself.
FROM node:20-bookworm-slim AS vendor
ARG MAPLIBRE_VERSION=5.24.1
WORKDIR /build
RUN npm pack --silent maplibre-gl@${MAPLIBRE_VERSION} \
    && tar -xzf maplibre-gl-${MAPLIBRE_VERSION}.tgz package/dist/maplibre-gl.js \
       package/dist/maplibre-gl.css package/LICENSE.txt \
    && mkdir vendor \
    && sed '/^\/\/# sourceMappingURL=/d' package/dist/maplibre-gl.js > vendor/maplibre-gl.js \
    && cp package/dist/maplibre-gl.css package/LICENSE.txt vendor/

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /srv/makazi
COPY pyproject.toml README.md ./
COPY app ./app
COPY geo ./geo
COPY migrations ./migrations
COPY --from=vendor /build/vendor ./app/static/vendor
RUN pip install --no-cache-dir -e . && useradd --system --home-dir /srv/makazi makazi
USER makazi
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["makazi", "serve", "--host", "0.0.0.0", "--port", "8000"]
