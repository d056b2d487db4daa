# Makazi app image. The database is a separate PostGIS server (see docker-compose.yml),
# reached through MAKAZI_DATABASE_URL. MapLibre GL JS and Swagger UI are vendored in
# app/static/vendor and the Alembic scripts are the `migrations` package, so the source tree
# is all it needs.
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /srv/makazi
COPY pyproject.toml README.md ./
COPY app ./app
COPY geo ./geo
COPY migrations ./migrations
RUN pip install --no-cache-dir -e . && useradd --system --home-dir /srv/makazi makazi
USER makazi
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["makazi", "serve", "--host", "0.0.0.0", "--port", "8000"]
