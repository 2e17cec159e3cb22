# meetbot: one image for `meetbot serve` and every operator command.
#   docker build -t meetbot .
#   docker run --env-file .env -p 3000:3000 meetbot            # serve
#   docker run --env-file .env meetbot doctor                  # any other command
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Build from a throw-away directory so the running code is the installed
# package, never a source tree that could shadow it.
# constraints.txt is optional: with one (see docs/security.md, "Reproducible
# images") every dependency is installed at the version it pins.
WORKDIR /src
COPY pyproject.toml README.md constraints*.txt ./
COPY bot/ bot/
COPY handlers/ handlers/
RUN if [ -f constraints.txt ]; then pip install -c constraints.txt .; else pip install .; fi \
    && rm -rf /src

# The app runs unprivileged. /app holds manifest.yml (for `meetbot doctor`'s
# scope check) and /data a SQLite database, if one is used: mount a volume there.
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin meetbot \
    && mkdir -p /app /data \
    && chown meetbot:meetbot /data
WORKDIR /app
COPY manifest.yml ./
USER meetbot

ENV PORT=3000 \
    DATABASE_URL=sqlite:////data/meetbot.db
EXPOSE 3000
VOLUME ["/data"]

# Liveness only (is the process serving HTTP?). Readiness with its DB and AMS
# checks is GET /readyz, for load balancers; see docs/deploy.md.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["meetbot", "healthcheck"]

ENTRYPOINT ["meetbot"]
CMD ["serve"]
